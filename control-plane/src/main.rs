//! `policy-control-plane`: serves route configurations from a directory over ADS.

fn main() -> std::process::ExitCode {
    policy_control_plane::main()
}
