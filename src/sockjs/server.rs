//! One SockJS endpoint's state: its settings, the session handler and the session registry.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::frame;
use super::session::{Full, Limits, Registry, Session};
use super::{SessionHandler, SockJsConfig};

pub(crate) struct Server<H> {
    pub cfg: SockJsConfig,
    pub handler: H,
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// Largest request body / WebSocket message accepted before decoding: JSON escaping can
    /// double a message, and clients batch several messages in one `xhr_send`.
    pub raw_limit: usize,
    pub iframe: (String, String),
}

impl<H: SessionHandler> Server<H> {
    pub(crate) fn new(mut cfg: SockJsConfig, handler: H) -> Self {
        cfg.prefix = cfg.prefix.trim_end_matches('/').to_owned();
        cfg.allowed_origins = cfg
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_owned())
            .collect();
        let iframe = frame::iframe_page(&cfg.sockjs_client_url);
        Self {
            registry: Arc::new(Registry::new(cfg.max_sessions)),
            limits: Limits {
                max_queued_bytes: cfg.max_queued_bytes,
                disconnect_delay: cfg.disconnect_delay,
            },
            raw_limit: cfg
                .max_incoming_message_bytes
                .saturating_mul(2)
                .saturating_add(64 * 1024),
            iframe,
            handler,
            cfg,
        }
    }

    pub(crate) fn session(&self, key: &str) -> Result<Arc<Session>, Full> {
        let (session, unstarted) = self.registry.get_or_create(key, self.limits)?;
        if let Some(unstarted) = unstarted {
            unstarted.start(&self.handler, &self.registry);
        }
        Ok(session)
    }

    pub(crate) fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        if self.cfg.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let origin = origin.to_str().unwrap_or_default();
        self.cfg
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    }
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
        body,
    )
        .into_response()
}

pub(crate) fn too_many_sessions() -> Response {
    tracing::info!("SockJS max_sessions reached, answering 503");
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many SockJS sessions.\n",
    )
}
