//! The test upstream as a process of its own, for tests that must kill it (`kill -9`):
//! `sluice-test-upstream ID 127.0.0.1:PORT [DELAY_MS]` serves until killed, after printing
//! `ready`; with `DELAY_MS`, every answer waits that long (a slow instance for benchmarks).
//! A line `delay MS` on standard input changes the delay while it runs (an instance that
//! degrades mid-run); anything else there is refused on standard error.

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(id), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: sluice-test-upstream ID HOST:PORT [DELAY_MS]");
        std::process::exit(1);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("bad address {addr:?}: {e}");
            std::process::exit(1);
        }
    };
    let delay_ms: u64 = match args.next().map(|d| d.parse()) {
        None => 0,
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            eprintln!("bad DELAY_MS: {e}");
            std::process::exit(1);
        }
    };
    let upstream = Arc::new(sluice_tests::Upstream::start_on(&id, addr).await);
    upstream.set_delay_ms(delay_ms);
    println!("ready");
    let commands = Arc::clone(&upstream);
    // A plain thread: standard input is read blocking, off the runtime.
    std::thread::spawn(move || {
        // Standard input closed (or never open): serve until killed.
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            match line
                .strip_prefix("delay ")
                .map(|ms| ms.trim().parse::<u64>())
            {
                Some(Ok(ms)) => commands.set_delay_ms(ms),
                _ => eprintln!("unknown command {line:?} (expected `delay MS`)"),
            }
        }
    });
    std::future::pending::<()>().await;
}
