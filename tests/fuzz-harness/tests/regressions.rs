//! Replays every input kept under `fuzz/regressions/<target>/` (what fuzzing found, once
//! fixed) and a seed per target, through the same functions the fuzz targets run.

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        eprintln!("{target}: {}", path.display());
        run(&bytes);
    }
}

#[test]
fn route_config_inputs() {
    replay("route_config", policy_fuzz_harness::route_config);
}

#[test]
fn ext_proc_stream_inputs() {
    replay("ext_proc_stream", policy_fuzz_harness::ext_proc_stream);
}

#[test]
fn manifest_inputs() {
    replay("manifest", policy_fuzz_harness::manifest);
}

#[test]
fn definition_inputs() {
    replay("definition", policy_fuzz_harness::definition);
}
