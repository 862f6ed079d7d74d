//! Process plumbing shared by both planes (`stompgate gateway` and `stompgate operator`):
//! shutdown signals, the OpenMetrics response and logging set-up.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::telemetry::{RedundantChannelCloses, log_filter};

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // No SIGTERM handler: Ctrl-C still works.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Content type of the `/metrics` endpoints.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `/metrics` response carrying an encoded registry.
pub fn openmetrics(body: String) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response()
}

/// A `/metrics` response carrying an encoded registry in pieces, sent one after the other
/// (never copied into one buffer), with their total as Content-Length.
pub fn openmetrics_chunks(chunks: Vec<String>) -> Response {
    let len: usize = chunks.iter().map(String::len).sum();
    let pieces = chunks.into_iter().map(Ok::<_, std::convert::Infallible>);
    (
        [
            (header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(futures::stream::iter(pieces)),
    )
        .into_response()
}

/// The gateway's logging (`--log-json`).
pub fn init_logging(json: bool) {
    install(Logging::gateway(json));
}

/// The operator's logging.
pub fn init_operator_logging() {
    install(Logging::operator());
}

/// How a plane logs.
#[derive(Clone, Copy, Debug)]
struct Logging {
    /// Filter when `RUST_LOG` is unset (see [`log_filter`]).
    default_filter: &'static str,
    /// One JSON object per line instead of text.
    json: bool,
    /// Drop lapin's ERROR events for channel closes the caller reports itself.
    drop_channel_closes: bool,
}

impl Logging {
    fn gateway(json: bool) -> Self {
        Logging {
            default_filter: "info,lapin=warn",
            json,
            drop_channel_closes: false,
        }
    }

    /// The operator's logging: it reports broker channel closes in its own terms.
    fn operator() -> Self {
        Logging {
            default_filter: "info,kube=warn",
            json: false,
            drop_channel_closes: true,
        }
    }
}

/// Installs the tracing subscriber, to stderr (colours only on a terminal).
fn install(logging: Logging) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (!logging.json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let json = logging.json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let drop_closes = logging
        .drop_channel_closes
        .then_some(RedundantChannelCloses);
    // try_init: tests may install a subscriber more than once.
    let _ = tracing_subscriber::registry()
        .with(log_filter(logging.default_filter))
        .with(drop_closes)
        .with(text)
        .with(json)
        .try_init();
}
