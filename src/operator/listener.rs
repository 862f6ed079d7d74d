//! Checks of the Secrets the gateway listeners read (`spec.tls`, `spec.auth.jwt`), done by the
//! operator before it rolls pods onto them: a pod given a Secret it cannot use would fail to
//! start (missing key: the volume never mounts) or refuse every client. The checks mirror what
//! the gateway accepts, so a condition names the problem instead.

use std::collections::BTreeMap;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The Secret type cert-manager writes and `spec.tls.secretName` needs.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Why a listener Secret cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretProblem {
    /// Not a `kubernetes.io/tls` Secret.
    #[error(
        "Secret {name} has type {found:?}; spec.tls.secretName needs a kubernetes.io/tls Secret (keys tls.crt and tls.key), e.g. `kubectl create secret tls {name} --cert=... --key=...` or a cert-manager Certificate"
    )]
    WrongType {
        /// Secret name.
        name: String,
        /// Its type.
        found: String,
    },
    /// A key is absent or empty.
    #[error(
        "Secret {name} has no (or an empty) key {key:?} (referenced by {field}); add it or fix the reference"
    )]
    MissingKey {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
        /// The spec field that references it.
        field: &'static str,
    },
    /// The data is there but the gateway could not use it.
    #[error("Secret {name} key {key:?} (referenced by {field}) is not usable: {why}")]
    Unusable {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
        /// The spec field that references it.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn value<'a>(
    data: &'a BTreeMap<String, Vec<u8>>,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<&'a [u8], SecretProblem> {
    match data.get(key) {
        Some(v) if !v.iter().all(u8::is_ascii_whitespace) => Ok(v),
        _ => Err(SecretProblem::MissingKey {
            name: name.into(),
            key: key.into(),
            field,
        }),
    }
}

/// Checks a listener TLS Secret: type `kubernetes.io/tls`, a PEM certificate chain in
/// `tls.crt` and a PEM private key in `tls.key`.
pub fn check_tls_secret(
    name: &str,
    type_: Option<&str>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<(), SecretProblem> {
    let found = type_.unwrap_or("Opaque");
    if found != TLS_SECRET_TYPE {
        return Err(SecretProblem::WrongType {
            name: name.into(),
            found: found.into(),
        });
    }
    let field = "spec.tls.secretName";
    let crt = value(data, name, "tls.crt", field)?;
    let key = value(data, name, "tls.key", field)?;
    let unusable = |key: &str, why: String| SecretProblem::Unusable {
        name: name.into(),
        key: key.into(),
        field,
        why,
    };
    let certs = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable("tls.crt", format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(unusable("tls.crt", "no PEM CERTIFICATE block in it".into()));
    }
    PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| unusable("tls.key", format!("no PEM private key in it ({e})")))?;
    Ok(())
}

/// Checks the JWKS the gateway reads: JSON, with at least one RS256-capable RSA key (others
/// are skipped by the gateway).
pub fn check_jwks(name: &str, key: &str, bytes: &[u8]) -> Result<(), SecretProblem> {
    let field = "spec.auth.jwt.jwksSecretRef";
    let unusable = |why: String| SecretProblem::Unusable {
        name: name.into(),
        key: key.into(),
        field,
        why,
    };
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| unusable(format!("not a JSON Web Key Set: {e}")))?;
    let usable = set.keys.iter().any(|jwk| {
        matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256))
            && matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            && jsonwebtoken::DecodingKey::from_jwk(jwk).is_ok()
    });
    if usable {
        Ok(())
    } else {
        Err(unusable(
            "no usable key: the gateway needs at least one RSA key for RS256 (kty RSA, alg RS256 or none)".into(),
        ))
    }
}

/// Checks the JWT keys of `spec.auth.jwt` from the Secrets' data (`secrets`: name -> data;
/// a name missing from it was not found, which the caller reports).
pub fn check_jwt(
    jwt: &crate::crd::JwtSpec,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<(), SecretProblem> {
    let empty = BTreeMap::new();
    if let Some(r) = &jwt.jwks_secret_ref {
        let data = secrets.get(&r.name).unwrap_or(&empty);
        let bytes = value(data, &r.name, &r.key, "spec.auth.jwt.jwksSecretRef")?;
        check_jwks(&r.name, &r.key, bytes)?;
    }
    if let Some(r) = &jwt.hs256_secret_ref {
        let data = secrets.get(&r.name).unwrap_or(&empty);
        value(data, &r.name, &r.key, "spec.auth.jwt.hs256SecretRef")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_data(crt: &str, key: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("tls.crt".to_string(), crt.as_bytes().to_vec()),
            ("tls.key".to_string(), key.as_bytes().to_vec()),
        ])
    }

    #[test]
    fn a_tls_secret_must_have_the_tls_type_and_both_pem_keys() {
        let ck = rcgen_like_pair();
        assert_eq!(
            check_tls_secret("t", Some(TLS_SECRET_TYPE), &tls_data(&ck.0, &ck.1)),
            Ok(())
        );
        let err = check_tls_secret("t", Some("Opaque"), &tls_data(&ck.0, &ck.1)).unwrap_err();
        assert!(matches!(err, SecretProblem::WrongType { .. }), "{err}");
        assert!(err.to_string().contains("has type \"Opaque\""), "{err}");
        let mut d = tls_data(&ck.0, &ck.1);
        d.remove("tls.key");
        let err = check_tls_secret("t", Some(TLS_SECRET_TYPE), &d).unwrap_err();
        assert!(err.to_string().contains("\"tls.key\""), "{err}");
        let err = check_tls_secret("t", Some(TLS_SECRET_TYPE), &tls_data("", &ck.1)).unwrap_err();
        assert!(matches!(err, SecretProblem::MissingKey { .. }), "{err}");
        let err =
            check_tls_secret("t", Some(TLS_SECRET_TYPE), &tls_data("garbage", &ck.1)).unwrap_err();
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        let err =
            check_tls_secret("t", Some(TLS_SECRET_TYPE), &tls_data(&ck.0, &ck.0)).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
    }

    // A syntactically valid PEM pair (the check does not verify the certificate itself).
    fn rcgen_like_pair() -> (String, String) {
        let b64 = "MIIBszCCAVmgAwIBAgIUAA==";
        (
            format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"),
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        )
    }

    #[test]
    fn a_jwks_needs_an_rsa_key_for_rs256() {
        let rsa = r#"{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
        assert_eq!(check_jwks("j", "jwks.json", rsa.as_bytes()), Ok(()));
        let ec = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let err = check_jwks("j", "jwks.json", ec.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("no usable key"), "{err}");
        let err = check_jwks("j", "jwks.json", b"{\"keys\": []}").unwrap_err();
        assert!(err.to_string().contains("no usable key"), "{err}");
        let err = check_jwks("j", "jwks.json", b"not json").unwrap_err();
        assert!(err.to_string().contains("not a JSON Web Key Set"), "{err}");
    }

    #[test]
    fn an_hs256_secret_must_not_be_empty() {
        let jwt: crate::crd::JwtSpec =
            serde_json::from_value(serde_json::json!({"hs256SecretRef": {"name": "h"}}))
                .expect("jwt");
        let secrets = BTreeMap::from([(
            "h".to_string(),
            BTreeMap::from([("secret".to_string(), b"\n".to_vec())]),
        )]);
        let err = check_jwt(&jwt, &secrets).unwrap_err();
        assert!(
            err.to_string().contains("no (or an empty) key \"secret\""),
            "{err}"
        );
        let secrets = BTreeMap::from([(
            "h".to_string(),
            BTreeMap::from([("secret".to_string(), b"s3cret".to_vec())]),
        )]);
        assert_eq!(check_jwt(&jwt, &secrets), Ok(()));
    }
}
