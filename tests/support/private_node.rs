//! A private RabbitMQ node (`scripts/rabbit-private-node.sh`) for tests that need a broker
//! of their own: stopped and its files removed when dropped, panics included.

use std::path::{Path, PathBuf};

pub struct PrivateNode {
    name: String,
    dir: PathBuf,
    amqp_port: u16,
    dist_port: u16,
}

fn node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbit-private-node.sh")
}

async fn run_script(args: &[&str]) {
    let out = tokio::process::Command::new(node_script())
        .args(args)
        .output()
        .await
        .expect("scripts/rabbit-private-node.sh runs (needs Debian's rabbitmq-server)");
    assert!(
        out.status.success(),
        "rabbit-private-node.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateNode {
    /// Starts an empty node; the ports must be unique to the calling test.
    pub async fn start(name: &str, amqp_port: u16, dist_port: u16) -> PrivateNode {
        let dir = std::env::temp_dir().join(format!("stompgate-{name}"));
        // A node left over by an aborted run: stop it and start from empty.
        run_script(&["stop", &dir.to_string_lossy()]).await;
        let _ = std::fs::remove_dir_all(&dir);
        let node = PrivateNode {
            name: name.to_string(),
            dir,
            amqp_port,
            dist_port,
        };
        node.up().await;
        node
    }

    /// Starts the node (again, with its data).
    pub async fn up(&self) {
        run_script(&[
            "start",
            &self.name,
            &self.dir.to_string_lossy(),
            &self.amqp_port.to_string(),
            &self.dist_port.to_string(),
        ])
        .await;
    }

    /// Clean shutdown (SIGTERM to beam.smp), or a crash (`kill -9`).
    pub async fn down(&self, crash: bool) {
        let how = if crash { "kill" } else { "stop" };
        run_script(&[how, &self.dir.to_string_lossy()]).await;
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new(node_script())
            .args(["kill", &self.dir.to_string_lossy()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
