//! Writes the stream target's seed inputs into a directory: `write-seeds DIR`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in policy_fuzz_harness::seed_streams() {
        std::fs::write(dir.join(format!("seed-{name}.bin")), bytes)?;
    }
    Ok(())
}
