//! The `sluice` command line: `serve`, `check`, `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::config::{self, LogFormat, LogSettings};
use sluice::server::{self, Parts};

/// jemalloc for the whole process: the request path allocates per request (pingora's
/// sessions, headers, buffers), and its thread caches cut glibc malloc's share of the CPU
/// profile (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (`_RJEM_MALLOC_CONF` in the environment still
/// overrides them): a background thread gives back the pages a burst freed (its dirty-page
/// decay, 10 s) on its own thread, instead of keeping them until an allocation on a request
/// thread happens to purge them. 8 000 idle connections opened 500 at a time: 4.0 → 2.8 KiB of
/// resident memory each once settled (docs/benchmarks.md).
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: JemallocOptions =
    JemallocOptions(c"background_thread:true,max_background_threads:1".as_ptr());

/// A C string pointer jemalloc reads as its `malloc_conf`.
#[repr(transparent)]
struct JemallocOptions(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
unsafe impl Sync for JemallocOptions {}

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
        /// Take the listening sockets over from the running gateway of this config (send it
        /// SIGQUIT once this one is started): a restart with no refused connection.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and everything it loads; one line per problem.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Register this instance in etcd and keep it registered (the service-side sidecar).
    Register(Box<RegisterArgs>),
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

#[derive(clap::Args)]
struct RegisterArgs {
    /// etcd endpoint(s), comma-separated: http://127.0.0.1:2379
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The service name.
    #[arg(long)]
    service: String,
    /// The address the gateway should send traffic to.
    #[arg(long)]
    addr: String,
    /// Instance id (default: the address with ':' as '-').
    #[arg(long)]
    id: Option<String>,
    /// Lease time to live: the key disappears this long after the registrar stops renewing.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    #[arg(long)]
    weight: Option<u32>,
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    version: Option<String>,
    #[arg(long)]
    zone: Option<String>,
    /// Poll this URL; 2xx/3xx is healthy. Status flips between UP and DOWN.
    #[arg(long)]
    health_url: Option<String>,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    health_interval: std::time::Duration,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    health_timeout: std::time::Duration,
    #[arg(long, default_value_t = 2)]
    healthy_after: u32,
    #[arg(long, default_value_t = 2)]
    unhealthy_after: u32,
    /// Key prefix.
    #[arg(long, default_value = "/services/")]
    prefix: String,
    #[arg(long, env = "SLUICE_ETCD_USER")]
    user: Option<String>,
    #[arg(long, env = "SLUICE_ETCD_PASSWORD")]
    password: Option<String>,
    /// PEM file of the CA that signed etcd's certificates (for https:// endpoints).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd servers that require one; needs --etcd-key.
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Client key (PEM); needs --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// Longest wait for delete + revoke on shutdown.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    deregister_timeout: std::time::Duration,
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
        /// The strategy's `tags`, comma-separated, as `[strategies.*] tags` would hand them.
        #[arg(long, value_delimiter = ',', default_value = "even")]
        tags: Vec<String>,
        /// Sample picks per pool size.
        #[arg(long, default_value_t = 100_000)]
        picks: u64,
    },
}

fn main() -> ExitCode {
    // rustls is built with two providers (aws-lc-rs for the listeners, ring for pingora's
    // upstream TLS), so it picks no process default by itself: libraries that build their TLS
    // configs from it (reqwest, tonic, pingora) get ring, as pingora would install. An `Err`
    // only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, upgrade } => serve(config, upgrade),
        Command::Check { config } => return check(config),
        Command::Demo { listen, admin } => demo(listen, admin),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    tags,
                    picks,
                },
        } => return plugin_check(file, &config, tags, picks),
        Command::Register(args) => return register(args),
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

/// Exit codes of `sluice register`.
const EXIT_BAD_ARGS: u8 = 1;
const EXIT_DEREGISTER_FAILED: u8 = 2;

fn register(args: Box<RegisterArgs>) -> ExitCode {
    let args = *args;
    sluice::logging::init(&LogSettings {
        format: LogFormat::Text,
        level: "info".into(),
        access_log: false,
    });
    if !args.prefix.ends_with('/') || args.service.is_empty() || args.service.contains('/') {
        eprintln!(
            "sluice register: --prefix must end with '/' and --service must be a name without '/'"
        );
        return ExitCode::from(EXIT_BAD_ARGS);
    }
    if let Err(e) = sluice::registry::decode_value("check", args.addr.as_bytes()) {
        eprintln!("sluice register: --addr: {e}");
        return ExitCode::from(EXIT_BAD_ARGS);
    }
    let tls = match args.etcd_ca {
        Some(ca) => {
            let tls = config::EtcdTls {
                ca,
                identity: args.etcd_cert.zip(args.etcd_key),
                server_name: None,
            };
            match sluice::registry::EtcdTlsPem::read(&tls) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    eprintln!("sluice register: {e}");
                    return ExitCode::from(EXIT_BAD_ARGS);
                }
            }
        }
        None => None,
    };
    let spec = sluice::registry::RegistrationSpec {
        endpoints: args.etcd,
        user: args.user.zip(args.password),
        tls,
        prefix: args.prefix,
        id: args.id.unwrap_or_else(|| args.addr.replace(':', "-")),
        service: args.service,
        addr: args.addr,
        ttl: args.ttl,
        weight: args.weight,
        version: args.version,
        zone: args.zone,
        tags: args.tags,
        metadata: Default::default(),
        health: args.health_url.map(|url| sluice::registry::HealthProbe {
            url,
            interval: args.health_interval,
            timeout: args.health_timeout,
            healthy_after: args.healthy_after,
            unhealthy_after: args.unhealthy_after,
        }),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice register: cannot start a runtime: {e}");
            return ExitCode::from(EXIT_BAD_ARGS);
        }
    };
    let timeout = args.deregister_timeout;
    runtime.block_on(async move {
        let registration = sluice::registry::Registration::start(spec);
        tracing::info!(
            key = registration.key(),
            "registering; SIGINT or SIGTERM deregisters"
        );
        let signal = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            }
        };
        let name = signal.await;
        tracing::info!("{name}: deregistering");
        match registration.deregister(timeout).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("deregistration failed: {e}");
                ExitCode::from(EXIT_DEREGISTER_FAILED)
            }
        }
    })
}

/// Sample pool sizes `plugin check` runs: small, typical, and large enough to need a buffer
/// of more than one page.
const CHECK_POOL_SIZES: [usize; 4] = [2, 16, 256, 4096];

fn plugin_check(file: PathBuf, config: &str, tags: Vec<String>, picks: u64) -> ExitCode {
    // The plugin's own log lines (`sluice.log`, target sluice::plugin) go to stderr.
    sluice::logging::init(&LogSettings {
        format: LogFormat::Text,
        level: "warn,sluice::plugin=debug".into(),
        access_log: false,
    });
    let config: serde_json::Value = match serde_json::from_str(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("--config: not JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = sluice::strategy::wasm::CheckSettings {
        config,
        tags: tags.into_iter().filter(|t| !t.is_empty()).collect(),
        sizes: CHECK_POOL_SIZES.to_vec(),
        picks,
    };
    let reports = match sluice::strategy::wasm::check_file(&file, &settings) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: refused: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    println!("{}: ABI v1 ok, probe ok", file.display());
    println!(
        "sample pools: instances sample-0, sample-1, … with weights 100, 50, 150 in turn, nothing in flight, no latency yet;"
    );
    for (j, tag) in settings.tags.iter().enumerate() {
        println!(
            "  tag bit {j} `{tag}` on every {} instance (0, {}, {}, …)",
            ordinal(j + 2),
            j + 2,
            2 * (j + 2)
        );
    }
    println!("  request_hash varies per pick, no request headers; then 1 retry per 16 picks with sample-0 tried");
    let mut failed = false;
    for r in &reports {
        let shown: Vec<String> = r.counts.iter().take(8).map(|c| c.to_string()).collect();
        let more = if r.counts.len() > 8 { ", …" } else { "" };
        println!(
            "  n={:<4} {:>8.1} ns/pick  (first pick, with instantiation and prepare: {:.0} µs)  picks per instance: [{}{more}]  retries: {}",
            r.instances,
            r.ns_per_pick,
            r.first_pick_us,
            shown.join(", "),
            r.retries
        );
        for (reason, count) in &r.fallbacks {
            println!("         FELL BACK to round-robin: {count} × {reason}");
        }
        failed |= r.fell_back();
    }
    if failed {
        eprintln!(
            "{}: refused: sample picks fell back to round-robin (the gateway would count each in sluice_strategy_fallbacks_total)",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `2` → "second", for the sample pool's description.
fn ordinal(n: usize) -> String {
    match n {
        2 => "second".into(),
        3 => "third".into(),
        n => format!("{n}th"),
    }
}

fn serve(path: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    let config = config::load(&path).map_err(|e| anyhow::anyhow!(e.lines().join("\n")))?;
    sluice::logging::init(&config.log);
    raise_open_files_limit();
    let source = server::source_for(&config)?;
    let parts = Parts::new(config, source)?;
    if !upgrade {
        parts.check_listeners()?;
    }
    tracing::info!(
        listen = ?parts.config.proxy.listen,
        admin = %parts.config.admin.listen,
        "sluice {} starting",
        env!("CARGO_PKG_VERSION")
    );
    parts.into_server(Vec::new(), upgrade).run_forever()
}

/// A gateway needs a descriptor per connection: the soft open-files limit goes to the hard one.
fn raise_open_files_limit() {
    match sluice::fd_limit::raise_to_hard() {
        Ok(files) => tracing::info!(open_files = files, "open-files limit"),
        Err(e) => tracing::warn!("open-files limit not raised: {e}"),
    }
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    sluice::logging::init(&LogSettings {
        format: LogFormat::Text,
        level: "info".into(),
        access_log: true,
    });
    raise_open_files_limit();
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
    demo.parts.into_server(demo.upstreams, false).run_forever()
}
