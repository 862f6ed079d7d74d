//! CONNECT/STOMP: version and heart-beat negotiation, credentials (passthrough, service user,
//! JWT), the broker connection request and CONNECTED.

use super::*;

impl Session {
    pub(super) fn on_connect(&mut self, mut frame: Frame) {
        self.login_with(&mut frame);
        // Whatever the outcome, the frame's passcode is not needed any more.
        frame.headers.zeroize_values("passcode");
    }

    pub(super) fn login_with(&mut self, frame: &mut Frame) {
        let version = match version::negotiate_version(frame.get("accept-version")) {
            Ok(v) => v,
            Err(_) => {
                self.send_error(
                    "Version mismatch",
                    "Supported versions are 1.0,1.1,1.2\n",
                    None,
                );
                self.close(CloseReason::LoginFailed);
                return;
            }
        };
        // RabbitMQ left-trims 1.0 header values; the codec cannot for CONNECT (version unknown).
        if version == Version::V1_0 {
            frame.headers.trim_start_values();
        }
        let client_heartbeat = match frame.get("heart-beat") {
            None => HeartBeat {
                send_ms: 0,
                expect_ms: 0,
            },
            Some(value) => match HeartBeat::parse(value) {
                Ok(hb) => hb,
                Err(e) => {
                    self.send_error("Invalid heart-beat", &format!("{e}\n"), None);
                    self.close(CloseReason::LoginFailed);
                    return;
                }
            },
        };
        let heartbeat = HeartBeat::negotiate(client_heartbeat, self.config.heartbeat_min);
        if let Some(jwt) = self.config.jwt.clone() {
            self.connect_with_token(&jwt, frame, version, heartbeat);
            return;
        }
        let (login, passcode) = if let Some((l, p)) = &self.config.forced_credentials {
            (l.clone(), Passcode::new(p.as_str()))
        } else {
            match (frame.get("login"), &self.config.default_credentials) {
                (Some(login), _) => (
                    login.to_string(),
                    Passcode::new(frame.get("passcode").unwrap_or_default()),
                ),
                (None, Some((l, p))) => (l.clone(), Passcode::new(p.as_str())),
                (None, None) => {
                    self.send_error("Bad CONNECT", "Access refused for user ''\n", None);
                    self.close(CloseReason::LoginFailed);
                    return;
                }
            }
        };
        let vhost = frame
            .get("host")
            .map(str::to_string)
            .unwrap_or_else(|| self.config.default_vhost.clone());
        self.login = login.clone();
        self.vhost = vhost.clone();
        if vhost.len() > destination::MAX_AMQP_NAME {
            // No vhost has such a name, and lapin panics on it (found by the session fuzz target).
            let detail = format!("Virtual host '{}' access denied", self.vhost_for_error());
            self.send_error("Bad CONNECT", &detail, None);
            self.close(CloseReason::LoginFailed);
            return;
        }
        self.phase = Phase::Connecting;
        self.in_flight = Some(InFlight::Connect { version, heartbeat });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Connect {
                login,
                passcode,
                vhost,
            }));
    }

    /// JWT mode: the token comes from the transport, else `passcode`, else `login`; the
    /// broker sees only the gateway's credentials, in its own vhost (`host` is ignored).
    pub(super) fn connect_with_token(
        &mut self,
        jwt: &JwtVerifier,
        frame: &Frame,
        version: Version,
        heartbeat: HeartBeat,
    ) {
        let token = self.bearer.take().or_else(|| {
            [frame.get("passcode"), frame.get("login")]
                .into_iter()
                .flatten()
                .find(|t| !t.is_empty())
                .map(str::to_string)
        });
        let grant = match jwt.verify(token.as_deref().unwrap_or_default()) {
            Ok(grant) => grant,
            Err(e) => {
                self.send_error("Bad CONNECT", &format!("Access refused: {e}\n"), None);
                self.close(CloseReason::LoginFailed);
                return;
            }
        };
        let Some((login, passcode)) = self.config.forced_credentials.clone() else {
            self.send_error("Bad CONNECT", "JWT auth mode has no service user\n", None);
            self.close(CloseReason::LoginFailed);
            return;
        };
        // The frame's arrival time: the session keeps no clock of its own.
        self.token_deadline = grant
            .expires_in
            .and_then(|d| self.last_received.checked_add(d));
        self.grant = Some(Box::new(grant));
        let vhost = self.config.default_vhost.clone();
        self.login = login.clone();
        self.vhost = vhost.clone();
        self.phase = Phase::Connecting;
        self.in_flight = Some(InFlight::Connect { version, heartbeat });
        self.actions
            .push_back(Action::Broker(BrokerRequest::Connect {
                login,
                passcode: Passcode::new(passcode),
                vhost,
            }));
    }

    /// JWT mode: refuses (ERROR, then close) a destination the token does not grant.
    pub(super) fn refused(&mut self, frame: &Frame, operation: &str) -> bool {
        let Some(grant) = &self.grant else {
            return false;
        };
        let Some(destination) = frame.get("destination") else {
            return false;
        };
        // `x-queue-name` names a queue outside the destination the token grants (and the
        // service user may reach any queue): not allowed with a token.
        if let Some(queue) = frame.get("x-queue-name") {
            let detail = format!(
                "ACCESS_REFUSED - the x-queue-name header ('{queue}') is not allowed with token authentication\n"
            );
            self.send_error("access_refused", &detail, receipt_of(frame));
            self.close(CloseReason::AccessRefused);
            return true;
        }
        let allowed = match operation {
            "subscribe" => grant.may_subscribe(destination),
            _ => grant.may_send(destination),
        };
        if allowed {
            return false;
        }
        let detail = format!(
            "ACCESS_REFUSED - {operation} access to destination '{destination}' refused for token subject '{}'\n",
            grant.subject
        );
        self.send_error("access_refused", &detail, receipt_of(frame));
        self.close(CloseReason::AccessRefused);
        true
    }

    pub(super) fn vhost_for_error(&self) -> &str {
        &self.vhost
    }

    pub(super) fn finish_connect(
        &mut self,
        version: Version,
        heartbeat: HeartBeat,
        server_product: Option<String>,
    ) {
        self.phase = Phase::Connected;
        self.version = version;
        self.heartbeat = heartbeat;
        let mut frame = Frame::new(Command::Connected);
        if let Some(server) = &self.config.server_header {
            let value = match server_product {
                Some(product) => format!("{product} {server}"),
                None => server.clone(),
            };
            frame.headers.push("server", value);
        }
        frame.headers.push("session", self.session_id.as_str());
        frame.headers.push(
            "heart-beat",
            format!("{},{}", heartbeat.send_ms, heartbeat.expect_ms),
        );
        frame.headers.push("version", version.as_str());
        self.actions.push_back(Action::Send(frame));
    }
}
