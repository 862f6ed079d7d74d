//! `stompgate render` and `stompgate lint`: offline tools over StompGateway manifests.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::resources::{self, BuildInputs};
use super::validate::{Finding, validate_value};
use crate::crd::StompGateway;

/// Errors of the offline tools.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("{path}: document {doc} is not valid YAML: {source}")]
    Yaml {
        /// The file.
        path: String,
        /// 1-based document index.
        doc: usize,
        /// Cause.
        source: serde_yaml::Error,
    },
    /// Validation failed.
    #[error("{0} problem(s) found")]
    Invalid(usize),
    /// No StompGateway in the input.
    #[error("no StompGateway found in the input")]
    Empty,
    /// A builder failed.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
    /// Output serialization failed.
    #[error("cannot print the result: {0}")]
    Print(String),
}

/// `stompgate render`.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// StompGateway manifest(s); `-` reads standard input. Other kinds are skipped.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for manifests that do not set one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Image used when spec.image is empty (same flag as the operator's).
    #[arg(long, env = "STOMPGATE_GATEWAY_IMAGE", default_value = super::DEFAULT_GATEWAY_IMAGE)]
    pub gateway_image: String,
}

/// `stompgate lint`.
#[derive(clap::Args, Debug, Clone)]
pub struct LintArgs {
    /// StompGateway manifest(s); `-` reads standard input. Other kinds are skipped.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// The previous version of the manifests (e.g. from the main branch): also runs the
    /// update-only rules, such as exchange immutability, matching objects by namespace/name.
    #[arg(long)]
    pub old: Vec<PathBuf>,
}

/// One YAML document with where it came from.
#[derive(Debug, Clone)]
pub struct Doc {
    /// Source file.
    pub path: String,
    /// 1-based document index.
    pub index: usize,
    /// The document.
    pub value: Value,
}

/// Reads every YAML document of the given files (`-` = stdin), skipping empty ones.
pub fn read_docs(files: &[PathBuf]) -> Result<Vec<Doc>, CliError> {
    let mut out = Vec::new();
    for f in files {
        let path = f.display().to_string();
        let text = if path == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|source| CliError::Read {
                    path: path.clone(),
                    source,
                })?;
            s
        } else {
            std::fs::read_to_string(f).map_err(|source| CliError::Read {
                path: path.clone(),
                source,
            })?
        };
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de).map_err(|source| CliError::Yaml {
                path: path.clone(),
                doc: i + 1,
                source,
            })?;
            if !value.is_null() {
                out.push(Doc {
                    path: path.clone(),
                    index: i + 1,
                    value,
                });
            }
        }
    }
    Ok(out)
}

fn is_gateway(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("StompGateway")
}

fn key(v: &Value) -> (String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// Lints documents; returns the findings per document (only documents with findings).
pub fn lint_docs(docs: &[Doc], old: &[Doc]) -> Vec<(String, Vec<Finding>)> {
    let mut out = Vec::new();
    for d in docs.iter().filter(|d| is_gateway(&d.value)) {
        let prev = old
            .iter()
            .find(|o| is_gateway(&o.value) && key(&o.value) == key(&d.value))
            .map(|o| &o.value);
        let f = validate_value(&d.value, prev);
        if !f.is_empty() {
            let (_, name) = key(&d.value);
            out.push((format!("{} (document {}, {name})", d.path, d.index), f));
        }
    }
    out
}

/// `stompgate lint -f FILE...`: prints each problem as `file (document N, name): field: message`.
pub fn lint(args: LintArgs) -> Result<(), CliError> {
    let docs = read_docs(&args.files)?;
    let old = read_docs(&args.old)?;
    let count = docs.iter().filter(|d| is_gateway(&d.value)).count();
    if count == 0 {
        return Err(CliError::Empty);
    }
    let results = lint_docs(&docs, &old);
    let mut n = 0;
    for (what, findings) in &results {
        for f in findings {
            n += 1;
            eprintln!("{what}: {f}");
        }
    }
    if n > 0 {
        return Err(CliError::Invalid(n));
    }
    println!("{count} StompGateway(s) valid");
    Ok(())
}

/// Renders the children of every StompGateway in `docs` as one multi-document YAML stream.
pub fn render_docs(docs: &[Doc], namespace: &str, gateway_image: &str) -> Result<String, CliError> {
    let mut out = String::new();
    let mut found = false;
    let inputs = BuildInputs {
        default_image: gateway_image.to_string(),
        secret_hash: String::new(),
        ..BuildInputs::default()
    };
    for d in docs.iter().filter(|d| is_gateway(&d.value)) {
        found = true;
        let findings = validate_value(&d.value, None);
        if !findings.is_empty() {
            for f in &findings {
                eprintln!("{} (document {}): {f}", d.path, d.index);
            }
            return Err(CliError::Invalid(findings.len()));
        }
        let mut gw: StompGateway =
            serde_json::from_value(d.value.clone()).map_err(|e| CliError::Print(e.to_string()))?;
        if gw.metadata.namespace.is_none() {
            gw.metadata.namespace = Some(namespace.to_string());
        }
        if let Some(r) = gw.spec.rabbitmq.cluster_ref.clone() {
            // Offline there is no cluster status to read: the Cluster Operator's naming
            // conventions stand in for it (what the controller reads may differ, e.g. TLS).
            let ns = gw.metadata.namespace.clone().unwrap_or_default();
            gw.spec.rabbitmq = crate::operator::cluster_ref::conventional_rabbitmq(
                &r.name,
                &ns,
                &gw.spec.rabbitmq.vhost,
            );
            eprintln!(
                "{} (document {}): spec.rabbitmq.clusterRef rendered with the RabbitMQ Cluster Operator's defaults (Service {}, Secret {}-default-user, no TLS); the operator reads the cluster's status instead",
                d.path, d.index, r.name, r.name
            );
        }
        let children = resources::build(&gw, &inputs)?;
        for v in resources::to_values(&children).map_err(|e| CliError::Print(e.to_string()))? {
            out.push_str("---\n");
            let doc = serde_yaml::to_string(&v).map_err(|e| CliError::Print(e.to_string()))?;
            out.push_str(&quote_yaml11_booleans(&doc));
        }
    }
    if !found {
        return Err(CliError::Empty);
    }
    Ok(out)
}

/// Words that YAML 1.1 readers (kubectl's go-yaml, PyYAML) take for booleans, which serde_yaml
/// (YAML 1.2) writes as plain scalars.
const YAML11_BOOLEANS: [&str; 18] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF", "=", "~",
];

/// Quotes string values that a YAML 1.1 reader would not read back as strings (e.g. the
/// ingress-nginx annotation value `off`, which `kubectl apply` would otherwise refuse as a
/// boolean where a string is expected).
pub fn quote_yaml11_booleans(doc: &str) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::with_capacity(doc.len());
    // Inside a block scalar (`key: |`): its lines are content, left as they are.
    let mut block: Option<usize> = None;
    for line in doc.lines() {
        if let Some(parent) = block {
            if line.trim().is_empty() || indent(line) > parent {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let value_at = line.rfind(": ").map(|i| i + 2).or_else(|| {
            let t = line.trim_start();
            t.starts_with("- ").then(|| indent(line) + 2)
        });
        let value = value_at.map(|i| &line[i..]).unwrap_or_default();
        if value.starts_with('|') || value.starts_with('>') {
            block = Some(indent(line));
        }
        match value_at {
            Some(i) if YAML11_BOOLEANS.contains(&value) => {
                out.push_str(&line[..i]);
                out.push('\'');
                out.push_str(value);
                out.push('\'');
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `stompgate render -f FILE...`.
pub fn render(args: RenderArgs) -> Result<(), CliError> {
    let docs = read_docs(&args.files)?;
    print!(
        "{}",
        render_docs(&docs, &args.namespace, &args.gateway_image)?
    );
    Ok(())
}
