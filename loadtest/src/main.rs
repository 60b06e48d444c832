//! `loadtest`: see `loadtest --help` and loadtest/README.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadtest::config::{Args, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    let (_, hard_nofile) = loadtest::limits::raise_nofile();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(json) = &args.child {
        let cfg: Config = match serde_json::from_str(json) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("loadtest: bad child config: {e}");
                return ExitCode::from(2);
            }
        };
        watchdog(cfg.hard_bound());
        return match runtime.block_on(loadtest::procs::run_child(cfg)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadtest child: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cfg = match args.validate(hard_nofile, cores) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    // The parent outlives its children's own watchdogs by a little.
    watchdog(cfg.hard_bound() + Duration::from_secs(60));
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("loadtest: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match runtime.block_on(loadtest::execute(cfg.clone(), &exe)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &cfg.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &cfg.markdown {
        if let Err(e) = std::fs::write(path, report.markdown()) {
            eprintln!("loadtest: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Ends the process if a run somehow outlives its bounds: every run stops by itself.
fn watchdog(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("loadtest: still running after {after:?}; exiting");
        std::process::exit(3);
    });
}
