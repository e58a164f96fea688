//! Pure checks and text the sandbox needs: refusing unusable specs, the environment of a
//! build without a chroot, and the sandbox's /etc files.

use std::collections::BTreeMap;

use ward_ipc::builder::SandboxSpec;

/// Refuses a value that cannot be applied safely.
fn check_absolute(what: &str, path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("{what} {path:?} contains a NUL byte"));
    }
    if !path.starts_with('/') {
        return Err(format!("{what} {path:?} is not an absolute path"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{what} {path:?} contains '.' or '..'"));
    }
    Ok(())
}

fn check_no_nul(what: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    Ok(())
}

/// A single path component: no `/`, not `.` or `..`, not empty, no NUL, at most 255 bytes.
pub fn check_component(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(format!("{what} {name:?} is not a single file name"));
    }
    Ok(())
}

/// Everything `build` refuses before touching the system.
pub fn check_sandbox_spec(spec: &SandboxSpec) -> Result<(), String> {
    check_absolute("store_dir", &spec.store_dir)?;
    check_absolute("real_store_dir", &spec.real_store_dir)?;
    check_absolute("sandbox_build_dir", &spec.sandbox_build_dir)?;
    check_absolute("host_build_dir", &spec.host_build_dir)?;
    check_absolute("builder", &spec.builder)?;
    if let Some(helper) = &spec.network_helper {
        check_absolute("network_helper", helper)?;
    }
    if spec.store_dir == "/" || spec.sandbox_build_dir == "/" {
        return Err("store_dir and sandbox_build_dir must not be '/'".into());
    }
    let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    if inside(&spec.store_dir, &spec.sandbox_build_dir)
        || inside(&spec.sandbox_build_dir, &spec.store_dir)
    {
        return Err(format!(
            "sandbox_build_dir {:?} and store_dir {:?} overlap",
            spec.sandbox_build_dir, spec.store_dir
        ));
    }
    for mount in &spec.bind_mounts {
        check_absolute("bind mount source", &mount.source)?;
        check_absolute("bind mount target", &mount.target)?;
        if mount.target == "/" {
            return Err("a bind mount cannot target '/'".into());
        }
    }
    for file in &spec.build_dir_files {
        check_component("build directory file", &file.name)?;
    }
    if !ward_ipc::builder::valid_tmpfs_size(&spec.tmpfs_size) {
        return Err(format!("tmpfs_size {:?} is not a size", spec.tmpfs_size));
    }
    for arg in &spec.args {
        check_no_nul("an argument", arg)?;
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("environment variable name {key:?} is invalid"));
        }
        check_no_nul(&format!("environment variable {key}"), value)?;
    }
    Ok(())
}

/// Without a chroot, values naming the sandbox's build directory name the host's instead.
pub fn rewrite_env_for_host(
    env: &BTreeMap<String, String>,
    sandbox_build_dir: &str,
    host_build_dir: &str,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let v = if v == sandbox_build_dir {
                host_build_dir.to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

/// `/etc/passwd` inside the sandbox (as Nix writes it).
pub fn passwd_text(uid: u32, gid: u32, build_dir: &str) -> String {
    format!(
        "root:x:0:0:Nix build user:{build_dir}:/noshell\n\
         nixbld:x:{uid}:{gid}:Nix build user:{build_dir}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

/// `/etc/group` inside the sandbox.
pub fn group_text(gid: u32) -> String {
    format!("root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n")
}

/// `/etc/hosts` inside the sandbox.
pub const HOSTS_TEXT: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Splits an absolute path into its components (no empty ones).
pub fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

#[cfg(test)]
pub mod tests {
    use ward_ipc::broker::BuildDirFile;
    use ward_ipc::builder::BindMount;
    use ward_ipc::store_path::StorePath;
    use ward_ipc::BuildId;

    use super::*;

    pub fn spec() -> SandboxSpec {
        let p = |b: &str| StorePath::from_base_name(b).unwrap();
        SandboxSpec {
            build: BuildId(1),
            drv_path: p("7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello.drv"),
            store_dir: "/nix/store".into(),
            real_store_dir: "/nix/store".into(),
            sandbox_build_dir: "/build".into(),
            host_build_dir: "/nix/var/nix/builds/1/build".into(),
            sandbox_uid: 1000,
            sandbox_gid: 100,
            chroot: true,
            private_store: false,
            network: false,
            network_helper: None,
            input_paths: Default::default(),
            output_paths: Default::default(),
            bind_mounts: vec![],
            build_dir_files: vec![],
            builder: "/bin/sh".into(),
            args: vec![],
            env: Default::default(),
            filter_syscalls: true,
            allow_new_privileges: false,
            groups_cleared: true,
            canary: false,
            tmpfs_size: "50%".into(),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        check_sandbox_spec(&spec()).unwrap();
    }

    #[test]
    fn relative_paths_and_nuls_are_refused() {
        let mut s = spec();
        s.builder = "bin/sh".into();
        assert!(check_sandbox_spec(&s)
            .unwrap_err()
            .contains("not an absolute path"));
        let mut s = spec();
        s.store_dir = "/nix/../etc".into();
        assert!(check_sandbox_spec(&s).is_err());
        let mut s = spec();
        s.args = vec!["a\0b".into()];
        assert!(check_sandbox_spec(&s).unwrap_err().contains("NUL"));
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert!(check_sandbox_spec(&s).is_err());
        let mut s = spec();
        s.bind_mounts.push(BindMount {
            source: "/bin/sh".into(),
            target: "relative".into(),
            optional: false,
        });
        assert!(check_sandbox_spec(&s).is_err());
        let mut s = spec();
        s.build_dir_files.push(BuildDirFile {
            name: "../x".into(),
            contents: vec![],
        });
        assert!(check_sandbox_spec(&s)
            .unwrap_err()
            .contains("single file name"));
        let mut s = spec();
        s.sandbox_build_dir = "/nix/store/build".into();
        assert!(check_sandbox_spec(&s).unwrap_err().contains("overlap"));
    }

    #[test]
    fn env_rewriting_replaces_exact_values_only() {
        let env: BTreeMap<String, String> = [
            ("TMPDIR", "/build"),
            ("NIX_BUILD_TOP", "/build"),
            ("out", "/nix/store/x-out"),
            ("other", "/build/sub"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let new = rewrite_env_for_host(&env, "/build", "/tmp/b/build");
        assert_eq!(new["TMPDIR"], "/tmp/b/build");
        assert_eq!(new["NIX_BUILD_TOP"], "/tmp/b/build");
        assert_eq!(new["out"], "/nix/store/x-out");
        assert_eq!(new["other"], "/build/sub");
    }

    #[test]
    fn etc_files() {
        let passwd = passwd_text(1000, 100, "/build");
        assert!(passwd.contains("\nnixbld:x:1000:100:Nix build user:/build:/noshell\n"));
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(passwd.contains("nobody:x:65534:65534:"));
        assert_eq!(
            group_text(100),
            "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"
        );
        assert_eq!(components("/a//b/").collect::<Vec<_>>(), ["a", "b"]);
    }
}
