//! `cargo bench --bench harness [-- --write]`: the benchmark harness (see BENCHMARKS.md). With
//! `--write` it rewrites BENCHMARKS.md's results; `--stamp FILE NAME` is its own helper, the
//! command the measured turns run: it appends `NAME <monotonic ns>` to FILE.

mod core;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--stamp") {
        let now = core::Clock::Monotonic.now_ns();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&args[2])
            .unwrap();
        writeln!(f, "{} {now}", args[3]).unwrap();
        return;
    }
    let me = std::env::current_exe().unwrap();
    // A quick look, not figures: `BENCH_TINY=1`.
    let tiny = std::env::var_os("BENCH_TINY").is_some();
    let config = core::Config {
        sessionlock: std::env::var_os("SESSIONLOCK_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_sessionlock").into(), Into::into),
        stamp: vec![me.into(), "--stamp".into()],
        clock: core::Clock::Monotonic,
        overhead_rounds: if tiny { 3 } else { 300 },
        handoff_rounds: if tiny { 2 } else { 20 },
        waiters: 8,
        contenders: if tiny { 2 } else { 16 },
        turns_each: if tiny { 3 } else { 50 },
        scale: if tiny {
            vec![2, 5]
        } else {
            vec![10, 100, 500, 2000]
        },
        also: std::env::var_os("SESSIONLOCK_BIN").map(|_| env!("CARGO_BIN_EXE_sessionlock").into()),
    };
    let report = core::run(&config);
    let machine = machine_line();
    let text = format!("{machine}\n\n{}", report.markdown());
    print!("{text}");
    if args.iter().any(|a| a == "--write") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let begin = "<!-- results -->\n";
        let end = "<!-- /results -->";
        let (Some(a), Some(b)) = (old.find(begin), old.find(end)) else {
            panic!("BENCHMARKS.md has no results markers");
        };
        let new = format!("{}{text}{}", &old[..a + begin.len()], &old[b..]);
        std::fs::write(&path, new).unwrap();
    }
}

/// The machine the figures come from.
fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let build = if std::env::var_os("SESSIONLOCK_BIN").is_some() {
        "the static build of README's install command"
    } else {
        "release profile"
    };
    format!(
        "Machine: {cores} cores ({cpu}), Linux {}, sessionlock {} ({build}).",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}
