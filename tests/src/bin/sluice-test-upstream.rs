//! The test upstream as a process of its own, for tests that must kill it (`kill -9`):
//! `sluice-test-upstream ID 127.0.0.1:PORT` serves until killed, after printing `ready`.

use std::net::SocketAddr;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(id), Some(addr)) = (args.next(), args.next()) else {
        eprintln!("usage: sluice-test-upstream ID HOST:PORT");
        std::process::exit(1);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("bad address {addr:?}: {e}");
            std::process::exit(1);
        }
    };
    let _upstream = sluice_tests::Upstream::start_on(&id, addr).await;
    println!("ready");
    std::future::pending::<()>().await;
}
