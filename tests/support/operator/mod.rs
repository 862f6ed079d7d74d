//! Shared helpers for the operator tests.
#![allow(dead_code)]

pub mod apiserver;
pub mod cluster;
pub mod kstatus;

use stompgate::crd::StompGateway;

/// A fixture file's text.
pub fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/support/operator/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A StompGateway from YAML.
pub fn gateway(yaml: &str) -> StompGateway {
    serde_yaml::from_str(yaml).expect("fixture is a StompGateway")
}
