//! `policy-builder`: builds a policy engine from a `policy-manifest.yaml`.
//!
//! Placeholder until the builder issue lands: it names itself and exits with a usage error so no
//! pipeline mistakes it for a working build.

fn main() {
    eprintln!(
        "policy-builder {}: not implemented yet (see the builder issue)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
