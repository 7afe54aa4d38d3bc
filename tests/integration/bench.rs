//! The benchmark harness, run in a tiny configuration so it cannot rot (its figures mean
//! nothing here: the debug build, and a shell stamping the time).

#[path = "../../benches/harness/core.rs"]
mod core;

#[test]
fn the_benchmark_harness_runs_every_measurement_in_a_tiny_configuration() {
    let config = core::Config {
        sessionlock: crate::support::bin().to_owned(),
        stamp: ["sh", "-c", "echo \"$2 $(date +%s%N)\" >> \"$1\"", "stamp"]
            .map(Into::into)
            .to_vec(),
        clock: core::Clock::Realtime,
        overhead_rounds: 2,
        handoff_rounds: 1,
        waiters: 2,
        contenders: 2,
        turns_each: 2,
        scale: vec![2, 3],
        also: Some(crate::support::bin().to_owned()),
    };
    let text = core::run(&config).markdown();
    for needle in [
        "sessionlock run -- true",
        "flock FILE true",
        "sessionlock prompt: handoff with 2 waiters",
        "flock: handoff with 2 waiters",
        "sessionlock's own part",
        "sessionlock prompt: 2 contenders x 2 turns | 0 FIFO violations in its own join order",
        "3 turns queued at once (median of 1)",
        "peak RSS of one wrapper (prompt --append)",
        "plain cargo install build",
        "binary size",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
    assert!(!text.contains("NaN"), "{text}");
}
