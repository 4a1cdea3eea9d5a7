//! The `sluice` command line: `serve`, `check`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::config::{self, LogFormat, LogSettings};
use sluice::server::{self, Parts};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Load-balancing gateway with WebAssembly strategies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and everything it loads; one line per problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Strategy plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// A self-contained first run: three echo upstreams behind the gateway.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a strategy module, check its ABI, run sample picks, print picks and ns/pick.
    Check {
        /// The `.wasm` (or `.wat`) file.
        file: PathBuf,
        /// The strategy's config as JSON, as `[strategies.*] config` would hand it.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Sample picks per pool size.
        #[arg(long, default_value_t = 100_000)]
        picks: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => return check(config),
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    picks,
                },
        } => return plugin_check(file, &config, picks),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = server::check(&config) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!(
        "{}: ok ({} routes, {} services with policy)",
        path.display(),
        config.routes.len(),
        config.services.len()
    );
    ExitCode::SUCCESS
}

fn plugin_check(file: PathBuf, config: &str, picks: u64) -> ExitCode {
    let config: serde_json::Value = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("--config: not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reports = match sluice::strategy::wasm::check_file(&file, config, &[2, 16, 256], picks) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: refused: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ABI v1 ok, probe ok", file.display());
    for r in &reports {
        let shown: Vec<String> = r.counts.iter().take(8).map(|c| c.to_string()).collect();
        let more = if r.counts.len() > 8 { ", …" } else { "" };
        println!(
            "  n={:<4} {:>8.1} ns/pick  picks per instance (weights 100,50,150,…): [{}{more}]",
            r.instances,
            r.ns_per_pick,
            shown.join(", ")
        );
        for (reason, count) in &r.fallbacks {
            println!("         fell back to round-robin: {count} × {reason}");
        }
    }
    ExitCode::SUCCESS
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = config::load(&path).map_err(|e| anyhow::anyhow!(e.lines().join("\n")))?;
    sluice::logging::init(&config.log);
    warn_unimplemented_policies(&config);
    let source = server::source_for(&config)?;
    let parts = Parts::new(config, source)?;
    tracing::info!(
        listen = ?parts.config.proxy.listen,
        admin = %parts.config.admin.listen,
        "sluice {} starting",
        env!("CARGO_PKG_VERSION")
    );
    parts.into_server(Vec::new()).run_forever()
}

fn warn_unimplemented_policies(config: &config::Config) {
    for (name, policy) in &config.services {
        if policy.health_check.is_some() || policy.passive.is_some() {
            tracing::warn!(
                service = %name,
                "health_check and passive ejection are accepted but not enforced by this build yet"
            );
        }
    }
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    sluice::logging::init(&LogSettings {
        format: LogFormat::Text,
        level: "info".into(),
        access_log: true,
    });
    let demo = sluice::demo::build(listen, admin).context("building the demo")?;
    println!("sluice demo: three echo upstreams behind the gateway (strategy least-conn)");
    for a in &demo.described {
        println!("  upstream {a}");
    }
    println!();
    println!("try:");
    println!("  curl http://{listen}/hello            # answered by echo-1, -2 or -3");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{listen}/; done");
    println!("  curl http://{admin}/admin/services    # pools, in flight, picks");
    println!("  curl http://{admin}/metrics");
    println!();
    demo.parts.into_server(demo.upstreams).run_forever()
}
