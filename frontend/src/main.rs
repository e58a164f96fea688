//! ward-frontend: the unprivileged process that speaks the Nix worker protocol to clients.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("ward-frontend: not implemented yet");
    std::process::exit(1);
}
