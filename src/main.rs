use clap::{Parser, Subcommand};

/// STOMP-over-WebSocket gateway to RabbitMQ, and its Kubernetes operator.
#[derive(Parser)]
#[command(name = "stompgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Version => println!("stompgate {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
