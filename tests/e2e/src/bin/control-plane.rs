//! The reference control plane, built here so the end-to-end tests can run it as a process.

fn main() -> std::process::ExitCode {
    policy_control_plane::main()
}
