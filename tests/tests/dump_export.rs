//! Getting paths out again: `nix-store --dump` (reads the store directory itself in Nix 2.8),
//! `nix store dump-path`, NarFromPath on the wire, and `nix-store --export | --import` into a
//! second ward store.

use ward_e2e_tests::wire::{PathInfo, WorkerClient};
use ward_e2e_tests::{inputs, nar, DaemonOptions, Fixture, ImportedGraph, WardDaemon};

#[test]
fn dump_of_an_added_tree_is_byte_identical_to_real_nix() {
    let Some(f) = Fixture::single_user("dump_of_an_added_tree_is_byte_identical_to_real_nix")
    else {
        return;
    };
    let input = inputs::tree(&f.env.dir("in"), "dumped", "dump");
    let path = f.ward.add(&[&input]).remove(0);
    assert_eq!(path, f.reference.client.add(&[&input]).remove(0));
    let dump = |p: &std::path::Path| {
        f.reference
            .client
            .ok("nix-store", &["--dump", p.to_str().unwrap()])
            .stdout
    };
    let of_input = dump(&input);
    let of_reference = dump(&f.reference.real_path(&path));
    let of_ward = dump(&f.real_path(&path));
    assert_eq!(
        of_input,
        nar::dump_path(&input).expect("dump"),
        "harness NAR writer disagrees with nix-store --dump"
    );
    assert_eq!(
        of_reference, of_input,
        "real Nix's store copy dumps differently from its input"
    );
    assert!(
        of_ward == of_input,
        "nix-store --dump of ward's {path} differs from the input's NAR"
    );
    // Through the daemon's URL (QueryPathInfo, then the chroot's files).
    let via_url = f.ward.ok("nix", &["store", "dump-path", &path]).stdout;
    assert!(
        via_url == of_input,
        "nix store dump-path {path} differs from the input's NAR"
    );
}

#[test]
fn nar_from_path_returns_the_nar_that_was_added() {
    // No Nix client needed: raw AddToStoreNar, QueryPathInfo and NarFromPath.
    let daemon = WardDaemon::start(DaemonOptions::single_user());
    let scratch = tempfile::tempdir().expect("tmp");
    let input = inputs::tree(scratch.path(), "wire", "nar-from-path");
    let nar = nar::dump_path(&input).expect("dump");
    let (path, ca) = nar::source_path("/nix/store", "wire", &nar);
    let mut info = PathInfo::for_nar(&path, &nar);
    info.ca = ca.clone();
    let mut client = WorkerClient::connect(daemon.socket()).expect("connect");
    client
        .add_to_store_nar(&info, &nar, 4096, false)
        .unwrap_or_else(|e| panic!("AddToStoreNar {path}: {e}"));
    let stored = client
        .query_path_info(&path)
        .expect("QueryPathInfo")
        .unwrap_or_else(|| panic!("{path} not valid after adding it"));
    assert_eq!(stored.nar_hash, info.nar_hash, "narHash of {path}");
    assert_eq!(stored.nar_size, nar.len() as u64, "narSize of {path}");
    assert_eq!(stored.ca, ca, "ca of {path}");
    assert!(stored.references.is_empty());
    let back = client
        .nar_from_path(&path, stored.nar_size)
        .unwrap_or_else(|e| panic!("NarFromPath {path}: {e}"));
    assert!(back == nar, "NarFromPath {path} returned a different NAR");
    // The connection is still in step afterwards.
    assert!(client.is_valid_path(&path).expect("IsValidPath"));
    // And what is on disk serialises to the same NAR.
    let on_disk =
        nar::dump_path(&daemon.layout().real_path(&path)).expect("dumping the stored copy");
    assert!(
        on_disk == nar,
        "the files of {path} on disk do not serialise to the NAR that was added"
    );
}

#[test]
fn export_import_into_a_second_ward_store() {
    let Some(f) = Fixture::single_user("export_import_into_a_second_ward_store") else {
        return;
    };
    let dir = f.env.dir("in");
    let input = inputs::tree(&dir, "exported", "export");
    let added = f.ward.add(&[&input]).remove(0);
    assert_eq!(added, f.reference.client.add(&[&input]).remove(0));
    let g = ImportedGraph::new(&dir, "/nix/store", "export");
    g.import(&f.ward);
    g.import(&f.reference.client);
    let paths = [added.as_str(), &g.a, &g.b, &g.c];
    let mut args = vec!["--export"];
    args.extend(paths);
    let exported = f.ward.ok("nix-store", &args).stdout;
    let exported_by_nix = f.reference.client.ok("nix-store", &args).stdout;
    assert!(
        exported == exported_by_nix,
        "nix-store --export from ward differs from real Nix's export of the same paths"
    );

    let second = WardDaemon::start(DaemonOptions::single_user());
    let second_client = f.env.client(&second);
    let out = second_client.ok_with_stdin("nix-store", &["--import"], &exported);
    let mut imported = out.lines();
    imported.sort();
    let mut expected: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(imported, expected, "{out}");
    for path in paths {
        let mut here = f.ward.path_info_json(path);
        let mut there = second_client.path_info_json(path);
        for info in [&mut here, &mut there] {
            let object = info.as_object_mut().expect("object");
            object.remove("registrationTime");
            // The export format carries no content address: an imported copy has none.
            object.remove("ca");
        }
        assert_eq!(there, here, "path info of {path} after export/import");
        inputs::assert_same_tree(&second.layout().real_path(path), &f.real_path(path));
    }
    assert_eq!(
        second_client
            .ok("nix-store", &["-q", "--references", &g.c])
            .lines()
            .len(),
        2,
        "references of {} after import",
        g.c
    );
}
