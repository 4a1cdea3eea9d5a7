//! The test upstream as a process of its own, for tests that must kill it (`kill -9`):
//! `sluice-test-upstream ID 127.0.0.1:PORT [DELAY_MS]` serves until killed, after printing
//! `ready`; with `DELAY_MS`, every answer waits that long (a slow instance for benchmarks).

use std::net::SocketAddr;

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
    let upstream = sluice_tests::Upstream::start_on(&id, addr).await;
    upstream.set_delay_ms(delay_ms);
    println!("ready");
    std::future::pending::<()>().await;
}
