//! `ward`: the user-facing command (`ward daemon`, `ward install`); also installed as
//! `nix-daemon`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    ward_frontend::launch::ward_main()
}
