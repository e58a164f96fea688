//! `ward`: the user-facing command (`ward daemon`, `ward install`, `ward doctor`, ...); also installed as
//! `nix-daemon`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ward_frontend::admin::ward_main()
}
