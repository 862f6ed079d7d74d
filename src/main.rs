use clap::{Parser, Subcommand};
use stompgate::{crd, operator};

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
    /// Runs the Kubernetes operator (reconciles StompGateway resources).
    Operator(operator::OperatorArgs),
    /// Prints the StompGateway CustomResourceDefinition YAML.
    Crd,
    /// Prints the Kubernetes objects the operator would apply for StompGateway manifests.
    Render(operator::cli::RenderArgs),
    /// Validates StompGateway manifests offline (schema and CEL rules).
    Lint(operator::cli::LintArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Version => println!("stompgate {}", env!("CARGO_PKG_VERSION")),
        Cmd::Operator(args) => operator::run(args).await?,
        Cmd::Crd => crd::print_crd()?,
        Cmd::Render(args) => operator::cli::render(args)?,
        Cmd::Lint(args) => operator::cli::lint(args)?,
    }
    Ok(())
}
