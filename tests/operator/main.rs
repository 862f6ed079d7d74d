//! Operator tests, one binary: the CRD, validation, the pure builders, the controller against
//! kube's mock service and against the in-memory API server (tests/kube-emulator), topology
//! against the real RabbitMQ, runtime pieces, packaging. Modules mirror the concerns of
//! src/operator; helpers live in tests/support.

#[path = "../e2e/proxy.rs"]
mod proxy;
#[path = "../support/mod.rs"]
mod support;

mod apiserver;
mod autoscaling;
mod cluster_ref;
mod controller;
mod crd;
mod exposure;
mod faults;
mod leak;
mod lint;
mod packaging;
mod resources;
mod runtime;
mod topology;
