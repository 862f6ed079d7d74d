//! JWT auth mode: validates a bearer token (HS256 secret and/or RS256 keys from a JWKS
//! file) and turns its destinations claim into what the session may subscribe to and send
//! to. The session calls [`JwtVerifier::verify`] (no IO); the key files are read at
//! startup and when they change. The broker never sees a token, and no token is logged.
//!
//! Destination patterns (claim `stomp_destinations` by default):
//!
//! ```json
//! {"subscribe": ["/exchange/rabbitmq/user.123.*", "/topic/news"], "send": ["/queue/orders"]}
//! ```
//!
//! A pattern is compared with the STOMP `destination` header as the client wrote it:
//! - no wildcard: the same string;
//! - ending in `*`: the text before it, then one word: one or more characters, none of
//!   `.`, `/` or `#` (so `/topic/user.123.*` allows `/topic/user.123.orders` and the AMQP
//!   wildcard `/topic/user.123.*` itself, but not `/topic/user.123.#` or
//!   `/topic/user.123.a.b`, which would reach further);
//! - ending in `#`: the text before it, then anything (possibly nothing).
//!
//! `*` and `#` anywhere else are literal characters. A missing list allows nothing.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    // Configuration (startup) errors.
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("JWKS file {path} is not a JSON Web Key Set: {message}")]
    Jwks { path: String, message: String },
    #[error("JWKS file {path} holds no RS256 signing key (RSA keys with alg RS256 or no alg)")]
    NoKeys { path: String },
    #[error("HS256 secret file {path} is empty")]
    EmptySecret { path: String },
    #[error("JWT auth needs --jwt-hs256-secret-file or --jwt-jwks-file")]
    NoVerifier,
    // Token errors: what a client is told (never the token itself).
    #[error("no token (send it as the CONNECT passcode)")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm '{0}' is not accepted")]
    Algorithm(String),
    #[error("token signing key '{0}' is unknown")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token has no '{0}' claim")]
    MissingClaim(String),
    #[error("token claim '{claim}' is invalid: {message}")]
    BadClaim { claim: String, message: String },
}

/// How tokens are checked (from the `--jwt-*` flags).
#[derive(Clone, Default)]
pub struct JwtSettings {
    pub hs256_secret: Option<Vec<u8>>,
    /// RS256 keys with their `kid`.
    pub rsa_keys: RsaKeys,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub destinations_claim: String,
}

/// The signing keys in force; swapped whole when the key files change.
struct Keys {
    hs256: Option<DecodingKey>,
    rsa_keys: RsaKeys,
}

/// Validates tokens; shared by every session.
pub struct JwtVerifier {
    keys: RwLock<Arc<Keys>>,
    issuer: Option<String>,
    audience: Option<String>,
    claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys();
        f.debug_struct("JwtVerifier")
            .field("hs256", &keys.hs256.is_some())
            .field("rs256_keys", &keys.rsa_keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claim", &self.claim)
            .finish()
    }
}

/// Reads an HS256 secret file (its bytes, less a trailing newline).
pub(crate) fn read_hs256_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut bytes = std::fs::read(path).map_err(|e| AuthError::Read {
        what: "HS256 secret file",
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(AuthError::EmptySecret {
            path: path.display().to_string(),
        });
    }
    Ok(bytes)
}

/// Reads the RS256 keys of a JWKS file; other keys are skipped.
pub(crate) fn read_jwks(path: &Path) -> Result<RsaKeys, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| AuthError::Read {
        what: "JWKS file",
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_jwks(&text).map_err(|message| match message {
        None => AuthError::NoKeys {
            path: path.display().to_string(),
        },
        Some(message) => AuthError::Jwks {
            path: path.display().to_string(),
            message,
        },
    })
}

/// `Err(None)`: no usable key; `Err(Some(text))`: not a JWKS.
fn parse_jwks(text: &str) -> Result<RsaKeys, Option<String>> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| Some(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let rs256 = matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256));
        if !rs256 || !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| Some(e.to_string()))?;
        keys.push((jwk.common.key_id.clone(), key));
    }
    if keys.is_empty() {
        return Err(None);
    }
    Ok(keys)
}

/// What a valid token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `sub`, for messages (empty when absent).
    pub subject: String,
    pub subscribe: Vec<String>,
    pub send: Vec<String>,
    /// Time left before `exp`.
    pub expires_in: Option<Duration>,
}

impl Grant {
    pub(crate) fn may_subscribe(&self, destination: &str) -> bool {
        self.subscribe
            .iter()
            .any(|p| pattern_matches(p, destination))
    }

    pub(crate) fn may_send(&self, destination: &str) -> bool {
        self.send.iter().any(|p| pattern_matches(p, destination))
    }
}

/// See the module documentation for the pattern language.
pub(crate) fn pattern_matches(pattern: &str, destination: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('#') {
        return destination.starts_with(prefix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return destination
            .strip_prefix(prefix)
            .is_some_and(|word| !word.is_empty() && !word.contains(['.', '/', '#']));
    }
    pattern == destination
}

/// RS256 keys with their `kid`.
pub type RsaKeys = Vec<(Option<String>, DecodingKey)>;

/// Where the keys come from, for reloading (`--jwt-hs256-secret-file`, `--jwt-jwks-file`).
#[derive(Clone, Debug, Default)]
pub struct KeyFiles {
    pub hs256_secret: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
}

impl KeyFiles {
    /// Reads both files.
    pub(crate) fn load(&self) -> Result<(Option<Vec<u8>>, RsaKeys), AuthError> {
        let secret = self
            .hs256_secret
            .as_deref()
            .map(read_hs256_secret)
            .transpose()?;
        let rsa = match &self.jwks {
            Some(path) => read_jwks(path)?,
            None => Vec::new(),
        };
        Ok((secret, rsa))
    }

    /// The configured files, to watch for rotation.
    pub(crate) fn paths(&self) -> Vec<std::path::PathBuf> {
        [&self.hs256_secret, &self.jwks]
            .into_iter()
            .flatten()
            .map(std::path::PathBuf::from)
            .collect()
    }
}

fn keys(secret: Option<&[u8]>, rsa_keys: RsaKeys) -> Result<Keys, AuthError> {
    if secret.is_none() && rsa_keys.is_empty() {
        return Err(AuthError::NoVerifier);
    }
    Ok(Keys {
        hs256: secret.map(DecodingKey::from_secret),
        rsa_keys,
    })
}

impl JwtVerifier {
    pub(crate) fn new(settings: JwtSettings) -> Result<Self, AuthError> {
        let keys = keys(settings.hs256_secret.as_deref(), settings.rsa_keys)?;
        Ok(JwtVerifier {
            keys: RwLock::new(Arc::new(keys)),
            issuer: settings.issuer,
            audience: settings.audience,
            claim: settings.destinations_claim,
        })
    }

    fn keys(&self) -> Arc<Keys> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts new keys in force (an IdP rotated its keys); tokens already accepted stay valid.
    pub(crate) fn replace_keys(
        &self,
        hs256_secret: Option<&[u8]>,
        rsa_keys: RsaKeys,
    ) -> Result<(), AuthError> {
        let keys = Arc::new(keys(hs256_secret, rsa_keys)?);
        match self.keys.write() {
            Ok(mut current) => *current = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        Ok(())
    }

    /// Checks signature, algorithm, `exp`, `nbf`, `iss` and `aud`, then reads the grant.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let alg = header_alg(token)?;
        let current = self.keys();
        // The algorithm is pinned by which keys exist, never taken on the token's word.
        let (algorithm, keys): (Algorithm, Vec<&DecodingKey>) = match alg.as_str() {
            "HS256" if current.hs256.is_some() => {
                (Algorithm::HS256, current.hs256.iter().collect())
            }
            "RS256" if !current.rsa_keys.is_empty() => {
                let header =
                    jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
                let keys: Vec<&DecodingKey> = match &header.kid {
                    Some(kid) => current
                        .rsa_keys
                        .iter()
                        .filter(|(id, _)| id.as_deref() == Some(kid.as_str()))
                        .map(|(_, k)| k)
                        .collect(),
                    None => current.rsa_keys.iter().map(|(_, k)| k).collect(),
                };
                if keys.is_empty() {
                    return Err(AuthError::UnknownKey(header.kid.unwrap_or_default()));
                }
                (Algorithm::RS256, keys)
            }
            other => return Err(AuthError::Algorithm(other.to_string())),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let mut last = AuthError::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &validation) {
                Ok(data) => return self.grant(&data.claims),
                Err(e) => {
                    last = map_error(e.kind(), &alg);
                    // Another key may match; any other failure is final.
                    if last != AuthError::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn grant(&self, claims: &serde_json::Map<String, Value>) -> Result<Grant, AuthError> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let expires_in = claims.get("exp").and_then(Value::as_u64).map(|exp| {
            Duration::from_secs(exp.saturating_sub(jsonwebtoken::get_current_timestamp()))
        });
        let Some(value) = claims.get(&self.claim) else {
            return Err(AuthError::MissingClaim(self.claim.clone()));
        };
        let bad = |message: &str| AuthError::BadClaim {
            claim: self.claim.clone(),
            message: message.to_string(),
        };
        let Some(map) = value.as_object() else {
            return Err(bad(
                "expected an object with 'subscribe' and 'send' lists of destination patterns",
            ));
        };
        let list = |key: &str| -> Result<Vec<String>, AuthError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad(&format!("'{key}' must list strings")))
                    })
                    .collect(),
                Some(_) => Err(bad(&format!("'{key}' must be a list"))),
            }
        };
        Ok(Grant {
            subject,
            subscribe: list("subscribe")?,
            send: list("send")?,
            expires_in,
        })
    }
}

/// The header's `alg`, read before any key is chosen (jsonwebtoken refuses unknown names,
/// `none` included, without saying which).
fn header_alg(token: &str) -> Result<String, AuthError> {
    use base64::Engine;
    let header = token.split('.').next().ok_or(AuthError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    value
        .get("alg")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(AuthError::Malformed)
}

fn map_error(kind: &ErrorKind, alg: &str) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => AuthError::BadClaim {
            claim: c.clone(),
            message: "wrong type".to_string(),
        },
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm(alg.to_string()),
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-of-reasonable-length";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn hs_verifier() -> JwtVerifier {
        JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET.to_vec()),
            issuer: Some("https://issuer.example".into()),
            audience: Some("stompgate".into()),
            destinations_claim: "stomp_destinations".into(),
            ..JwtSettings::default()
        })
        .unwrap()
    }

    fn claims(exp_offset: i64) -> Value {
        json!({
            "sub": "user-123",
            "iss": "https://issuer.example",
            "aud": "stompgate",
            "exp": (now() as i64 + exp_offset) as u64,
            "stomp_destinations": {
                "subscribe": ["/exchange/rabbitmq/user.123.*", "/topic/news"],
                "send": ["/queue/orders#"]
            }
        })
    }

    fn hs_token(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn b64(v: &Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn patterns_exact_word_and_rest() {
        assert!(pattern_matches("/topic/news", "/topic/news"));
        assert!(!pattern_matches("/topic/news", "/topic/news.x"));
        assert!(pattern_matches("/topic/user.1.*", "/topic/user.1.orders"));
        assert!(pattern_matches("/topic/user.1.*", "/topic/user.1.*"));
        assert!(!pattern_matches("/topic/user.1.*", "/topic/user.1.#"));
        assert!(!pattern_matches("/topic/user.1.*", "/topic/user.1.a.b"));
        assert!(!pattern_matches("/topic/user.1.*", "/topic/user.1."));
        assert!(!pattern_matches("/queue/a-*", "/queue/a-b/c"));
        assert!(!pattern_matches("/topic/user.1.*", "/topic/user.2.x"));
        assert!(pattern_matches("/queue/orders#", "/queue/orders"));
        assert!(pattern_matches("/queue/orders#", "/queue/orders.eu/x"));
        assert!(!pattern_matches("/queue/orders#", "/queue/order"));
        // Wildcards inside a pattern are literal.
        assert!(pattern_matches("/topic/*.news", "/topic/*.news"));
        assert!(!pattern_matches("/topic/*.news", "/topic/a.news"));
    }

    #[test]
    fn valid_token_yields_the_grant() {
        let grant = hs_verifier().verify(&hs_token(&claims(300))).unwrap();
        assert_eq!(grant.subject, "user-123");
        assert!(grant.may_subscribe("/exchange/rabbitmq/user.123.alerts"));
        assert!(grant.may_subscribe("/topic/news"));
        assert!(!grant.may_subscribe("/exchange/rabbitmq/user.124.alerts"));
        assert!(!grant.may_send("/topic/news"));
        assert!(grant.may_send("/queue/orders"));
        let left = grant.expires_in.unwrap();
        assert!(left > Duration::from_secs(250) && left <= Duration::from_secs(300));
    }

    #[test]
    fn expired_wrong_issuer_audience_and_signature_are_refused() {
        let v = hs_verifier();
        assert_eq!(v.verify(&hs_token(&claims(-600))), Err(AuthError::Expired));
        let mut c = claims(300);
        c["iss"] = json!("https://evil.example");
        assert_eq!(v.verify(&hs_token(&c)), Err(AuthError::Issuer));
        let mut c = claims(300);
        c["aud"] = json!("other");
        assert_eq!(v.verify(&hs_token(&c)), Err(AuthError::Audience));
        let mut c = claims(300);
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            v.verify(&hs_token(&c)),
            Err(AuthError::MissingClaim("iss".into()))
        );
        let mut c = claims(300);
        c["nbf"] = json!(now() + 600);
        assert_eq!(v.verify(&hs_token(&c)), Err(AuthError::NotYetValid));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims(300),
            &EncodingKey::from_secret(b"another-secret"),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(AuthError::BadSignature));
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(v.verify("  "), Err(AuthError::Missing));
    }

    #[test]
    fn alg_none_and_unconfigured_algorithms_are_refused() {
        let v = hs_verifier();
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims(300))
        );
        assert_eq!(v.verify(&none), Err(AuthError::Algorithm("none".into())));
        // RS256 is not configured here: an RS256 header cannot select the HMAC secret.
        let rs = format!(
            "{}.{}.c2ln",
            b64(&json!({"alg": "RS256"})),
            b64(&claims(300))
        );
        assert_eq!(v.verify(&rs), Err(AuthError::Algorithm("RS256".into())));
    }

    #[test]
    fn claim_shape_is_checked() {
        let v = hs_verifier();
        let mut c = claims(300);
        c.as_object_mut().unwrap().remove("stomp_destinations");
        assert_eq!(
            v.verify(&hs_token(&c)),
            Err(AuthError::MissingClaim("stomp_destinations".into()))
        );
        c["stomp_destinations"] = json!(["/topic/a"]);
        assert!(matches!(
            v.verify(&hs_token(&c)),
            Err(AuthError::BadClaim { .. })
        ));
        c["stomp_destinations"] = json!({"subscribe": [1]});
        assert!(matches!(
            v.verify(&hs_token(&c)),
            Err(AuthError::BadClaim { .. })
        ));
        c["stomp_destinations"] = json!({"send": ["/queue/x"]});
        let grant = v.verify(&hs_token(&c)).unwrap();
        assert!(grant.subscribe.is_empty());
        assert!(grant.may_send("/queue/x"));
    }

    #[test]
    fn jwks_without_rsa_keys_or_not_json_is_refused() {
        assert_eq!(parse_jwks("{\"keys\": []}").err(), Some(None));
        assert!(matches!(parse_jwks("nope"), Err(Some(_))));
        assert!(matches!(
            JwtVerifier::new(JwtSettings::default()),
            Err(AuthError::NoVerifier)
        ));
    }
}
