# One image for both planes: `stompgate operator` and `stompgate gateway`.
#   docker build -t stompgate/stompgate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin stompgate \
    && install -D -m 0755 target/release/stompgate /out/stompgate

# distroless: no shell, no package manager; runs as uid 65532 with a read-only root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/stompgate /usr/local/bin/stompgate
USER 65532:65532
EXPOSE 15674 61613 8080
ENTRYPOINT ["/usr/local/bin/stompgate"]
CMD ["gateway"]
