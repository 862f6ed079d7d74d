use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// mimalloc keeps the resident size per idle connection low (glibc's arenas fragment under
// tens of thousands of small per-connection allocations).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stompgate::gateway::config::{GatewayArgs, GatewayConfig};
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
    /// Data plane: STOMP over WebSocket/SockJS/TCP <-> RabbitMQ.
    Gateway(Box<GatewayArgs>),
    /// The founding scenario on this machine: gateway + page + publisher.
    Demo(stompgate::demo::DemoArgs),
    /// Runs the Kubernetes operator (reconciles StompGateway resources).
    Operator(operator::OperatorArgs),
    /// Prints the StompGateway CustomResourceDefinition YAML.
    Crd,
    /// Prints the Kubernetes objects the operator would apply for StompGateway manifests.
    Render(operator::cli::RenderArgs),
    /// Validates StompGateway manifests offline (schema and CEL rules).
    Lint(operator::cli::LintArgs),
    /// Load tool for any ws:// STOMP endpoint: fanout, connections, echo.
    Bench(stompgate::bench::BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Cmd::Gateway(args) => {
            // The gateway's own matches tell which flags the command line or the environment
            // set: the config file fills the others.
            let gateway = matches
                .subcommand_matches("gateway")
                .expect("the gateway subcommand was parsed");
            let config = GatewayConfig::from_matches(*args, gateway)?;
            stompgate::runtime::init_logging(config.log_json);
            stompgate::gateway::server::run(config, axum::Router::new()).await?;
        }
        Cmd::Demo(args) => {
            stompgate::runtime::init_logging(false);
            stompgate::demo::run(args).await?;
        }
        Cmd::Operator(args) => operator::run(args).await?,
        Cmd::Crd => crd::print_crd()?,
        Cmd::Render(args) => operator::cli::render(args)?,
        Cmd::Lint(args) => operator::cli::lint(args)?,
        Cmd::Bench(args) => {
            stompgate::bench::run(args).await?;
        }
    }
    Ok(())
}

/// Tens of thousands of connections each own a few small allocations; with transparent huge
/// pages a sparsely used 2 MiB page counts in full toward the resident size. Best effort.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
