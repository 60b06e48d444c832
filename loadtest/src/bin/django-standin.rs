//! `django-standin`: the Django stand-in for the bench token scheme (see `loadtest::standin`).
//!
//! Prints `listening on http://ADDR` once bound; stops on SIGINT/SIGTERM or after
//! `--duration` seconds and prints its request counts.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use loadtest::standin::{self, StandinStats};

#[derive(Debug, Parser)]
#[command(name = "django-standin", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Stop after this many seconds (at most one day)
    #[arg(long, default_value_t = 3600)]
    duration: u64,
    /// Worker threads
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.duration == 0 || args.duration > 86_400 || !(1..=64).contains(&args.threads) {
        eprintln!("django-standin: --duration must be 1..=86400 and --threads 1..=64");
        return ExitCode::from(2);
    }
    loadtest::limits::raise_nofile();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("django-standin: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats = Arc::new(StandinStats::default());
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
                () = tokio::time::sleep(Duration::from_secs(args.duration)) => {}
            }
        };
        standin::serve(listener, stats.clone(), stop).await;
        Ok::<(), std::io::Error>(())
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    println!(
        "django-standin: {} requests ({} users ok, {} lessons ok, {} refused)",
        stats.requests.load(Relaxed),
        stats.users_ok.load(Relaxed),
        stats.lessons_ok.load(Relaxed),
        stats.refused.load(Relaxed)
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("django-standin: {e}");
            ExitCode::FAILURE
        }
    }
}
