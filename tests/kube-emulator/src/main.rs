//! `kube-emulator [--listen 127.0.0.1:6443] [--kubeconfig FILE]`: runs the emulator until
//! Ctrl-C, writing a kubeconfig that points at it.

use std::time::Duration;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut opts = kube_emulator::Options::default();
    let mut kubeconfig: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                opts.listen = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--listen ADDR:PORT")
            }
            "--kubeconfig" => kubeconfig = args.next().map(Into::into),
            "--bookmark-secs" => {
                opts.bookmark_interval = Duration::from_secs(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--bookmark-secs N"),
                )
            }
            "-h" | "--help" => {
                println!(
                    "kube-emulator [--listen 127.0.0.1:6443] [--kubeconfig FILE] [--bookmark-secs 5]\n\nAn in-memory Kubernetes API server for tests (see docs/api-emulator.md)."
                );
                return Ok(());
            }
            other => {
                eprintln!("unknown argument {other}; see --help");
                std::process::exit(2);
            }
        }
    }
    let emu = kube_emulator::Emulator::start_with(opts).await?;
    match &kubeconfig {
        Some(p) => {
            emu.write_kubeconfig(p)?;
            eprintln!(
                "kube-emulator on {}; kubeconfig written to {}",
                emu.url(),
                p.display()
            );
        }
        None => {
            eprintln!("kube-emulator on {}; kubeconfig:", emu.url());
            print!("{}", emu.kubeconfig());
        }
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
