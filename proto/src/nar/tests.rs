//! Unit tests of the NAR module: every refusal on hand-built archives, the writer's refusals,
//! helpers, filesystem round trips, and property tests over random trees.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;

// ---- hand-built archives -----------------------------------------------------------------

/// Builds NAR bytes token by token, including malformed ones.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    /// Starts with the magic.
    fn nar() -> Self {
        Raw::default().s(b"nix-archive-1")
    }

    /// Appends one well-formed string token.
    fn s(mut self, token: &[u8]) -> Self {
        self.0
            .extend_from_slice(&(token.len() as u64).to_le_bytes());
        self.0.extend_from_slice(token);
        self.0.resize(self.0.len().next_multiple_of(8), 0);
        self
    }

    fn ss(self, tokens: &[&[u8]]) -> Self {
        tokens.iter().fold(self, |raw, token| raw.s(token))
    }

    /// Appends a bare little-endian u64.
    fn n(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// Appends bytes verbatim.
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// A complete regular file node.
    fn regular(self, contents: &[u8]) -> Self {
        self.ss(&[b"(", b"type", b"regular", b"contents", contents, b")"])
    }

    /// `entry ( name <name> node`.
    fn entry(self, name: &[u8]) -> Self {
        self.ss(&[b"entry", b"(", b"name", name, b"node"])
    }

    /// A root directory holding one regular file per name, in the order given.
    fn directory_of(names: &[&[u8]]) -> Vec<u8> {
        let mut raw = Raw::nar().ss(&[b"(", b"type", b"directory"]);
        for name in names {
            raw = raw.entry(name).regular(b"x").s(b")");
        }
        raw.s(b")").0
    }
}

/// An event with owned data, for comparisons.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Directory(Vec<u8>),
    DirectoryEnd(Vec<u8>),
    File(Vec<u8>, bool, Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
}

fn events_with(bytes: &[u8], options: ParseOptions) -> Result<Vec<Owned>, NarError> {
    let mut reader = NarReader::with_options(bytes, options);
    let mut out = Vec::new();
    while let Some(event) = reader.next()? {
        out.push(match event {
            Event::Directory { path } => Owned::Directory(path.as_bytes().to_vec()),
            Event::DirectoryEnd { path } => Owned::DirectoryEnd(path.as_bytes().to_vec()),
            Event::Symlink { path, target } => {
                Owned::Symlink(path.as_bytes().to_vec(), target.to_vec())
            }
            Event::File {
                path,
                executable,
                size,
                mut contents,
            } => {
                let data = read_all(&mut contents)?;
                assert_eq!(data.len() as u64, size);
                Owned::File(path.as_bytes().to_vec(), executable, data)
            }
        });
    }
    Ok(out)
}

/// Reads a file's contents in odd-sized chunks.
fn read_all<R: Read>(contents: &mut FileContents<'_, R>) -> Result<Vec<u8>, NarError> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 7];
    loop {
        let n = contents.read_chunk(&mut chunk)?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&chunk[..n]);
    }
}

fn events(bytes: &[u8]) -> Result<Vec<Owned>, NarError> {
    events_with(bytes, ParseOptions::default())
}

fn refused_with(bytes: &[u8], options: ParseOptions) -> NarError {
    match events_with(bytes, options) {
        Ok(events) => panic!("accepted a bad nar: {events:?}"),
        Err(e) => {
            // Every refusal has a lowercase, non-empty message.
            let message = e.to_string();
            assert!(!message.is_empty());
            assert!(!message.starts_with(char::is_uppercase), "{message}");
            e
        }
    }
}

fn refused(bytes: &[u8]) -> NarError {
    refused_with(bytes, ParseOptions::default())
}

fn hello_nar() -> Vec<u8> {
    Raw::nar().regular(b"hello\n").0
}

const HELLO_SHA256: &str = "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13";
const TV4_SHA256: &str = "64032129cd88eddd37d39d745f95c3eac92d3bb3c56c0c922218224d5236c764";

/// TV4 of the protocol facts: a.txt, link -> a.txt, executable run.
fn tv4_nar() -> Vec<u8> {
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    nar.entry(b"a.txt").unwrap();
    nar.file_from_bytes(false, b"hello\n").unwrap();
    nar.entry(b"link").unwrap();
    nar.symlink(b"a.txt").unwrap();
    nar.entry(b"run").unwrap();
    nar.file_from_bytes(true, b"#!/bin/sh\n").unwrap();
    nar.end_directory().unwrap();
    nar.finish().unwrap()
}

// ---- accepted archives -------------------------------------------------------------------

#[test]
fn hello_vector_is_read_and_hashed() {
    let nar = hello_nar();
    assert_eq!(nar.len(), 120);
    assert_eq!(hex::encode(Sha256::digest(&nar)), HELLO_SHA256);
    assert_eq!(
        events(&nar).unwrap(),
        vec![Owned::File(vec![], false, b"hello\n".to_vec())]
    );
    let (digest, size) = hash_and_size(&nar[..]).unwrap();
    assert_eq!((hex::encode(digest), size), (HELLO_SHA256.to_string(), 120));
}

#[test]
fn tv4_vector_is_written_and_read() {
    let nar = tv4_nar();
    assert_eq!(nar.len(), 712);
    assert_eq!(hex::encode(Sha256::digest(&nar)), TV4_SHA256);
    assert_eq!(
        events(&nar).unwrap(),
        vec![
            Owned::Directory(vec![]),
            Owned::File(b"a.txt".to_vec(), false, b"hello\n".to_vec()),
            Owned::Symlink(b"link".to_vec(), b"a.txt".to_vec()),
            Owned::File(b"run".to_vec(), true, b"#!/bin/sh\n".to_vec()),
            Owned::DirectoryEnd(vec![]),
        ]
    );
}

#[test]
fn writer_output_matches_the_hand_built_bytes() {
    let mut nar = NarWriter::new(Vec::new());
    nar.file_from_bytes(false, b"hello\n").unwrap();
    assert_eq!(nar.bytes_written(), 120);
    assert_eq!(nar.finish().unwrap(), hello_nar());

    let expected = Raw::nar()
        .ss(&[b"(", b"type", b"regular", b"executable", b"", b"contents"])
        .s(b"")
        .s(b")")
        .0;
    let mut nar = NarWriter::new(Vec::new());
    nar.file_from_bytes(true, b"").unwrap();
    assert_eq!(nar.finish().unwrap(), expected);
}

#[test]
fn nested_paths_and_nar_path_helpers() {
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    nar.entry(b"a").unwrap();
    nar.directory().unwrap();
    nar.entry(b"b").unwrap();
    nar.symlink(b"/abs").unwrap();
    nar.end_directory().unwrap();
    nar.entry(b"c").unwrap();
    nar.directory().unwrap();
    nar.end_directory().unwrap();
    nar.end_directory().unwrap();
    let bytes = nar.finish().unwrap();

    let mut reader = NarReader::new(&bytes[..]);
    let mut seen = Vec::new();
    while let Some(event) = reader.next().unwrap() {
        let path = event.path();
        seen.push((
            path.to_string(),
            path.depth(),
            path.file_name().to_vec(),
            path.is_root(),
        ));
    }
    let expect = |p: &str, d, n: &[u8], r| (p.to_string(), d, n.to_vec(), r);
    assert_eq!(
        seen,
        vec![
            expect("/", 0, b"", true),
            expect("/a", 1, b"a", false),
            expect("/a/b", 2, b"b", false),
            expect("/a", 1, b"a", false),
            expect("/c", 1, b"c", false),
            expect("/c", 1, b"c", false),
            expect("/", 0, b"", true),
        ]
    );
    assert!(reader.is_done());
    assert_eq!(reader.offset(), bytes.len() as u64);
    // Once done, it stays done.
    assert!(reader.next().unwrap().is_none());
}

#[test]
fn entries_compare_as_unsigned_bytes() {
    // 'B' (0x42) < 'a' (0x61) < 0xff: accepted in this order only.
    let sorted: &[&[u8]] = &[b"B", b"a", b"ab", b"\xff"];
    assert_eq!(
        events(&Raw::directory_of(sorted)).unwrap().len(),
        2 + sorted.len()
    );
    // As signed chars 0xff would sort first; as unsigned bytes it sorts last.
    let e = refused(&Raw::directory_of(&[b"\xff", b"a"]));
    assert!(
        matches!(&e, NarError::UnsortedEntries { previous, name, .. }
            if previous == "\\xff" && name == "a"),
        "{e}"
    );
}

#[test]
fn unread_contents_are_skipped_and_still_checked() {
    let nar = tv4_nar();
    let mut reader = NarReader::new(&nar[..]);
    let mut files = 0;
    while let Some(event) = reader.next().unwrap() {
        if let Event::File { mut contents, .. } = event {
            let mut first = [0u8; 1];
            assert_eq!(contents.read_chunk(&mut first).unwrap(), 1);
            assert!(contents.remaining() > 0);
            files += 1;
        }
    }
    assert_eq!(files, 2);

    // Bad padding after contents nobody read is still refused.
    let mut bad = Raw::nar()
        .ss(&[b"(", b"type", b"regular", b"contents"])
        .n(1)
        .raw(b"x\0\0\x01\0\0\0\0")
        .s(b")")
        .0;
    let mut reader = NarReader::new(&bad[..]);
    assert!(matches!(reader.next(), Ok(Some(Event::File { .. }))));
    let e = reader.next().unwrap_err();
    assert!(
        matches!(e, NarError::NonZeroPadding { offset: 97, .. }),
        "{e}"
    );
    bad[99] = 0;
    assert!(events(&bad).is_ok());
}

#[test]
fn file_contents_read_impl_reports_truncation() {
    let nar = Raw::nar()
        .ss(&[b"(", b"type", b"regular", b"contents"])
        .n(100)
        .raw(b"short")
        .0;
    let mut reader = NarReader::new(&nar[..]);
    let Some(Event::File { mut contents, .. }) = reader.next().unwrap() else {
        panic!("expected a file");
    };
    let mut data = Vec::new();
    let e = contents.read_to_end(&mut data).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(data, b"short");
    let inner = e.into_inner().unwrap().downcast::<NarError>().unwrap();
    assert!(matches!(
        *inner,
        NarError::Truncated {
            what: "file contents",
            ..
        }
    ));
}

/// Yields one byte per read call, to exercise partial reads everywhere.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.0.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn reader_stops_exactly_at_the_end_of_the_nar() {
    let mut stream = tv4_nar();
    stream.extend_from_slice(b"NEXT MESSAGE");
    let mut reader = NarReader::new(Trickle(&stream));
    reader.skip_to_end().unwrap();
    assert_eq!(reader.offset(), 712);
    assert_eq!(reader.into_inner().0, b"NEXT MESSAGE");
}

// ---- refusals ----------------------------------------------------------------------------

#[test]
fn refuses_bad_or_missing_magic() {
    for bad in [
        Vec::new(),
        Raw::default().s(b"nix-archive-2").regular(b"").0,
        Raw::default().s(b"nix-archive").regular(b"").0,
        Raw::default().n(13).raw(b"nix-archive-1").0, // padding missing
        Raw::default()
            .n(13)
            .raw(b"nix-archive-1\0\0\x01")
            .regular(b"")
            .0,
        Raw::default().n(u64::MAX).0,
        Raw::default().regular(b"").0,
        b"nix-archive-1".to_vec(),
    ] {
        let e = refused(&bad);
        assert!(matches!(e, NarError::BadMagic), "{e}");
    }
}

#[test]
fn refuses_missing_open_paren() {
    let e = refused(
        &Raw::nar()
            .ss(&[b"type", b"regular", b"contents", b"", b")"])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { offset: 24, found, .. } if found == "type"),
        "{e}"
    );
    // Also for the node of an entry.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"directory"])
            .entry(b"a")
            .ss(&[b"type", b"regular"])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { path, expected, .. }
            if path == "/a" && expected.contains('(')),
        "{e}"
    );
}

#[test]
fn refuses_missing_type() {
    let e = refused(&Raw::nar().ss(&[b"(", b"contents", b"", b")"]).0);
    assert!(
        matches!(&e, NarError::UnexpectedTag { expected, found, .. }
            if expected.contains("type") && found == "contents"),
        "{e}"
    );
}

#[test]
fn refuses_unknown_file_type() {
    let e = refused(&Raw::nar().ss(&[b"(", b"type", b"fifo", b")"]).0);
    assert!(
        matches!(&e, NarError::UnknownFileType { found, .. } if found == "fifo"),
        "{e}"
    );
}

#[test]
fn refuses_unknown_tags() {
    // Where contents belong.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"regular", b"AAAAAAAA", b")"])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "AAAAAAAA"),
        "{e}"
    );
    // Inside a directory.
    let e = refused(&Raw::nar().ss(&[b"(", b"type", b"directory", b"entri"]).0);
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "entri"),
        "{e}"
    );
    // Where a symlink's target belongs.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"contents", b"x"])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "contents"),
        "{e}"
    );
    // After a symlink's target.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"target", b"x", b"target", b"y"])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "target"),
        "{e}"
    );
    // `name` after `node` in an entry (the name-after-node golden file's shape).
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"directory", b"entry", b"(", b"node"])
            .regular(b"")
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { expected, found, .. }
            if expected.contains("name") && found == "node"),
        "{e}"
    );
    // Something other than `)` closing an entry.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"directory"])
            .entry(b"a")
            .regular(b"")
            .s(b"name")
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { path, found, .. } if path == "/" && found == "name"),
        "{e}"
    );
    // A second `contents`.
    let e = refused(
        &Raw::nar()
            .ss(&[
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"a",
                b"contents",
                b"b",
                b")",
            ])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "contents"),
        "{e}"
    );
    // The longest allowed tag is shown whole.
    let e = refused(&Raw::nar().ss(&[b"(", b"type", b"regular", &[b'Z'; 16]]).0);
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found.len() == 16),
        "{e}"
    );
}

#[test]
fn refuses_a_second_type() {
    for bad in [
        Raw::nar()
            .ss(&[b"(", b"type", b"regular", b"type", b"regular"])
            .0,
        Raw::nar()
            .ss(&[b"(", b"type", b"regular", b"executable", b"", b"type"])
            .0,
        Raw::nar()
            .ss(&[
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"",
                b"type",
                b"directory",
            ])
            .0,
        Raw::nar()
            .ss(&[b"(", b"type", b"directory", b"type", b"directory"])
            .0,
        Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"type", b"symlink"])
            .0,
        Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"target", b"x", b"type"])
            .0,
    ] {
        let e = refused(&bad);
        assert!(matches!(e, NarError::DuplicateType { .. }), "{e}");
    }
}

#[test]
fn refuses_non_empty_executable_marker() {
    let e = refused(
        &Raw::nar()
            .ss(&[
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"1",
                b"contents",
                b"",
                b")",
            ])
            .0,
    );
    assert!(
        matches!(
            e,
            NarError::NonEmptyExecutableMarker {
                len: 1,
                offset: 96,
                ..
            }
        ),
        "{e}"
    );
    // A huge marker length is refused before anything is read or allocated.
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"regular", b"executable"])
            .n(u64::MAX)
            .0,
    );
    assert!(
        matches!(e, NarError::NonEmptyExecutableMarker { len: u64::MAX, .. }),
        "{e}"
    );
}

#[test]
fn refuses_executable_after_contents() {
    let e = refused(
        &Raw::nar()
            .ss(&[
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"hi",
                b"executable",
                b"",
                b")",
            ])
            .0,
    );
    assert!(
        matches!(e, NarError::ExecutableAfterContents { offset: 104, .. }),
        "{e}"
    );
    // Twice `executable` is refused too.
    let e = refused(
        &Raw::nar()
            .ss(&[
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"",
                b"executable",
                b"",
            ])
            .0,
    );
    assert!(
        matches!(&e, NarError::UnexpectedTag { found, .. } if found == "executable"),
        "{e}"
    );
}

#[test]
fn refuses_invalid_entry_names() {
    for (name, reason) in [
        (&b""[..], "empty"),
        (b".", "not allowed"),
        (b"..", "not allowed"),
        (b"a/b", "'/'"),
        (b"/", "'/'"),
        (b"a\0b", "nul"),
    ] {
        let e = refused(&Raw::directory_of(&[name]));
        assert!(
            matches!(&e, NarError::InvalidEntryName { directory, reason: r, .. }
                if directory == "/" && r.contains(reason)),
            "{e}"
        );
    }
    // Names that merely look odd are fine.
    assert!(events(&Raw::directory_of(&[b"\n", b"...", b".a", b"\xff\xfe"])).is_ok());
}

#[test]
fn refuses_unsorted_and_duplicate_entries() {
    let e = refused(&Raw::directory_of(&[b"b", b"a"]));
    assert!(
        matches!(&e, NarError::UnsortedEntries { previous, name, .. }
            if previous == "b" && name == "a"),
        "{e}"
    );
    let e = refused(&Raw::directory_of(&[b"a", b"b", b"b"]));
    assert!(
        matches!(&e, NarError::DuplicateEntry { name, .. } if name == "b"),
        "{e}"
    );
    // A prefix sorts first.
    let e = refused(&Raw::directory_of(&[b"ab", b"a"]));
    assert!(matches!(e, NarError::UnsortedEntries { .. }), "{e}");
    // Sorting is per directory: the same name in two directories is fine.
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    for dir in [b"x", b"y"] {
        nar.entry(dir).unwrap();
        nar.directory().unwrap();
        nar.entry(b"same").unwrap();
        nar.symlink(b"t").unwrap();
        nar.end_directory().unwrap();
    }
    nar.end_directory().unwrap();
    assert!(events(&nar.finish().unwrap()).is_ok());
}

#[test]
fn refuses_non_zero_padding() {
    // In a tag.
    let e = refused(&Raw::nar().n(1).raw(b"(\0\0\0\0\0\0\x01").0);
    assert!(
        matches!(e, NarError::NonZeroPadding { offset: 33, .. }),
        "{e}"
    );
    // In a name.
    let bad = Raw::nar()
        .ss(&[b"(", b"type", b"directory", b"entry", b"(", b"name"])
        .n(1)
        .raw(b"a\x01\0\0\0\0\0\0")
        .0;
    let e = refused(&bad);
    assert!(
        matches!(&e, NarError::NonZeroPadding { path, .. } if path == "/"),
        "{e}"
    );
    // After contents.
    let bad = Raw::nar()
        .ss(&[b"(", b"type", b"regular", b"contents"])
        .n(3)
        .raw(b"abc\0\0\0\0\x80")
        .s(b")")
        .0;
    let e = refused(&bad);
    assert!(
        matches!(e, NarError::NonZeroPadding { offset: 99, .. }),
        "{e}"
    );
    // In a symlink target.
    let bad = Raw::nar()
        .ss(&[b"(", b"type", b"symlink", b"target"])
        .n(1)
        .raw(b"t\0\0\0\0\0\0\x01")
        .s(b")")
        .0;
    assert!(matches!(refused(&bad), NarError::NonZeroPadding { .. }));
}

#[test]
fn refuses_every_truncation() {
    let nar = tv4_nar();
    for len in 0..nar.len() {
        let e = refused(&nar[..len]);
        assert!(
            matches!(e, NarError::Truncated { .. } | NarError::BadMagic),
            "prefix of {len} bytes: {e}"
        );
    }
    // Truncated inside contents: path and what are named.
    let e = refused(&nar[..235]);
    assert!(
        matches!(&e, NarError::Truncated { path, what: "file contents", .. } if path == "/a.txt"),
        "{e}"
    );
    // And with one-byte reads, the same holds.
    let mut reader = NarReader::new(Trickle(&nar[..700]));
    let e = reader.skip_to_end().unwrap_err();
    assert!(matches!(e, NarError::Truncated { .. }), "{e}");
}

#[test]
fn trailing_data_is_refused_only_when_asked() {
    let mut nar = hello_nar();
    nar.push(0);
    assert!(events(&nar).is_ok());
    let options = ParseOptions {
        require_eof: true,
        ..ParseOptions::default()
    };
    let e = refused_with(&nar, options.clone());
    assert!(matches!(e, NarError::TrailingData { offset: 120 }), "{e}");
    assert!(events_with(&hello_nar(), options).is_ok());
}

fn nested_directories(depth: usize) -> Vec<u8> {
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    for _ in 0..depth {
        nar.entry(b"d").unwrap();
        nar.directory().unwrap();
    }
    for _ in 0..=depth {
        nar.end_directory().unwrap();
    }
    nar.finish().unwrap()
}

#[test]
fn refuses_nesting_over_the_depth_limit() {
    let nar = nested_directories(5);
    let options = |max_depth| ParseOptions {
        max_depth,
        ..ParseOptions::default()
    };
    assert!(events_with(&nar, options(5)).is_ok());
    let e = refused_with(&nar, options(4));
    assert!(
        matches!(&e, NarError::TooDeep { path, limit: 4, .. } if path == "/d/d/d/d/d"),
        "{e}"
    );
    let e = refused_with(&nar, options(0));
    assert!(
        matches!(&e, NarError::TooDeep { path, .. } if path == "/d"),
        "{e}"
    );
    // The default limit is 256.
    assert!(events(&nested_directories(256)).is_ok());
    let e = refused(&nested_directories(257));
    assert!(matches!(e, NarError::TooDeep { limit: 256, .. }), "{e}");
}

#[test]
fn refuses_files_over_the_size_limit() {
    let options = ParseOptions {
        max_file_size: 5,
        ..ParseOptions::default()
    };
    assert!(events_with(&Raw::nar().regular(b"12345").0, options.clone()).is_ok());
    let e = refused_with(&hello_nar(), options);
    assert!(
        matches!(
            e,
            NarError::FileTooLarge {
                size: 6,
                limit: 5,
                offset: 88,
                ..
            }
        ),
        "{e}"
    );
    // Without a limit, a huge size only means truncation, not allocation.
    let nar = Raw::nar()
        .ss(&[b"(", b"type", b"regular", b"contents"])
        .n(u64::MAX)
        .0;
    assert!(matches!(refused(&nar), NarError::Truncated { .. }));
}

#[test]
fn refuses_strings_over_their_limits_before_reading_them() {
    // A tag with an absurd length.
    let e = refused(&Raw::nar().n(u64::MAX).0);
    assert!(
        matches!(
            e,
            NarError::StringTooLong {
                what: "tag",
                len: u64::MAX,
                offset: 24,
                ..
            }
        ),
        "{e}"
    );
    let e = refused(&Raw::nar().ss(&[b"(", b"type"]).n(17).0);
    assert!(
        matches!(
            e,
            NarError::StringTooLong {
                what: "tag",
                limit: 16,
                ..
            }
        ),
        "{e}"
    );
    // Names: 255 bytes are fine, 256 are not.
    assert!(events(&Raw::directory_of(&[&[b'n'; 255]])).is_ok());
    let e = refused(&Raw::directory_of(&[&[b'n'; 256]]));
    assert!(
        matches!(
            e,
            NarError::StringTooLong {
                what: "entry name",
                len: 256,
                limit: 255,
                ..
            }
        ),
        "{e}"
    );
    let e = refused(
        &Raw::nar()
            .ss(&[b"(", b"type", b"directory", b"entry", b"(", b"name"])
            .n(u64::MAX)
            .0,
    );
    assert!(
        matches!(
            e,
            NarError::StringTooLong {
                what: "entry name",
                ..
            }
        ),
        "{e}"
    );
    // Symlink targets: 4095 bytes are fine, 4096 are not.
    let link = |target: &[u8]| {
        Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"target", target, b")"])
            .0
    };
    assert!(events(&link(&[b't'; 4095])).is_ok());
    let e = refused(&link(&[b't'; 4096]));
    assert!(
        matches!(
            e,
            NarError::StringTooLong {
                what: "symlink target",
                limit: 4095,
                ..
            }
        ),
        "{e}"
    );
    // The limits are configurable.
    let options = ParseOptions {
        max_name_len: 3,
        max_target_len: 2,
        ..ParseOptions::default()
    };
    assert!(events_with(&Raw::directory_of(&[b"abc"]), options.clone()).is_ok());
    assert!(events_with(&Raw::directory_of(&[b"abcd"]), options.clone()).is_err());
    assert!(events_with(&link(b"ab"), options.clone()).is_ok());
    assert!(events_with(&link(b"abc"), options).is_err());
}

#[test]
fn refuses_invalid_symlink_targets() {
    for (target, reason) in [(&b""[..], "empty"), (b"a\0b", "nul")] {
        let nar = Raw::nar()
            .ss(&[b"(", b"type", b"symlink", b"target", target, b")"])
            .0;
        let e = refused(&nar);
        assert!(
            matches!(&e, NarError::InvalidSymlinkTarget { reason: r, .. } if r.contains(reason)),
            "{e}"
        );
    }
}

#[test]
fn refuses_entries_and_nodes_over_the_count_limits() {
    let nar = Raw::directory_of(&[b"a", b"b", b"c"]);
    let options = |entries, nodes| ParseOptions {
        max_directory_entries: entries,
        max_nodes: nodes,
        ..ParseOptions::default()
    };
    assert!(events_with(&nar, options(3, 4)).is_ok());
    let e = refused_with(&nar, options(2, 100));
    assert!(
        matches!(&e, NarError::TooManyEntries { limit: 2, directory, .. } if directory == "/"),
        "{e}"
    );
    let e = refused_with(&nar, options(100, 3));
    assert!(
        matches!(&e, NarError::TooManyNodes { limit: 3, path, .. } if path == "/c"),
        "{e}"
    );
}

#[test]
fn a_failed_reader_stays_failed() {
    let nar = Raw::directory_of(&[b"b", b"a"]);
    let mut reader = NarReader::new(&nar[..]);
    let e = reader.skip_to_end().unwrap_err();
    assert!(matches!(e, NarError::UnsortedEntries { .. }));
    assert!(matches!(reader.next(), Err(NarError::UsedAfterError)));
}

#[test]
fn errors_escape_hostile_bytes() {
    let e = refused(&Raw::directory_of(&[b"\x1b[31mred\n/"]));
    let message = e.to_string();
    assert!(
        !message.contains('\x1b') && !message.contains('\n'),
        "{message}"
    );
    assert!(message.contains("\\x1b[31mred\\n/"), "{message}");
}

// ---- writer refusals ---------------------------------------------------------------------

#[test]
fn writer_refuses_calls_out_of_order() {
    let mut nar = NarWriter::new(Vec::new());
    assert!(matches!(
        nar.entry(b"a"),
        Err(NarError::WriterMisuse { .. })
    ));
    assert!(matches!(
        nar.end_directory(),
        Err(NarError::WriterMisuse { .. })
    ));
    nar.directory().unwrap();
    assert!(matches!(
        nar.symlink(b"x"),
        Err(NarError::WriterMisuse { .. })
    ));
    assert!(matches!(
        nar.directory(),
        Err(NarError::WriterMisuse { .. })
    ));
    nar.entry(b"a").unwrap();
    assert!(matches!(
        nar.entry(b"b"),
        Err(NarError::WriterMisuse { .. })
    ));
    assert!(matches!(
        nar.end_directory(),
        Err(NarError::WriterMisuse { .. })
    ));
    nar.symlink(b"x").unwrap();
    nar.end_directory().unwrap();
    // A second root.
    assert!(matches!(
        nar.symlink(b"x"),
        Err(NarError::WriterMisuse { .. })
    ));
    assert_eq!(events(&nar.finish().unwrap()).unwrap().len(), 3);

    // Nothing to finish yet.
    let e = NarWriter::new(Vec::new()).finish().unwrap_err();
    assert!(matches!(e, NarError::WriterMisuse { .. }), "{e}");
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    assert!(matches!(nar.finish(), Err(NarError::WriterMisuse { .. })));
}

#[test]
fn writer_refuses_bad_names_order_and_targets() {
    let mut nar = NarWriter::new(Vec::new());
    nar.directory().unwrap();
    for name in [&b""[..], b".", b"..", b"a/b", b"a\0", &[b'n'; 256]] {
        let e = nar.entry(name).unwrap_err();
        assert!(matches!(e, NarError::InvalidEntryName { .. }), "{e}");
    }
    nar.entry(b"m").unwrap();
    for target in [&b""[..], b"a\0", &[b't'; 4096]] {
        let e = nar.symlink(target).unwrap_err();
        assert!(matches!(e, NarError::InvalidSymlinkTarget { .. }), "{e}");
    }
    nar.symlink(&[b't'; 4095]).unwrap();
    let e = nar.entry(b"m").unwrap_err();
    assert!(matches!(e, NarError::DuplicateEntry { .. }), "{e}");
    let e = nar.entry(b"a").unwrap_err();
    assert!(matches!(e, NarError::UnsortedEntries { .. }), "{e}");
    nar.entry(&[b'n'; 255]).unwrap();
    nar.file_from_bytes(false, b"").unwrap();
    nar.end_directory().unwrap();
    assert!(events(&nar.finish().unwrap()).is_ok());
}

#[test]
fn writer_refuses_contents_of_the_wrong_size() {
    // Too many bytes through the sink.
    let mut nar = NarWriter::new(Vec::new());
    let mut sink = nar.begin_file(false, 3).unwrap();
    sink.write_chunk(b"ab").unwrap();
    assert_eq!(sink.remaining(), 1);
    let e = sink.write_chunk(b"cd").unwrap_err();
    assert!(
        matches!(
            e,
            NarError::ContentsSizeMismatch {
                declared: 3,
                actual: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        matches!(nar.symlink(b"x"), Err(NarError::WriterMisuse { what })
            if what.contains("after an error"))
    );

    // Too few.
    let mut nar = NarWriter::new(Vec::new());
    let mut sink = nar.begin_file(false, 3).unwrap();
    sink.write_chunk(b"ab").unwrap();
    let e = sink.finish().unwrap_err();
    assert!(
        matches!(
            e,
            NarError::ContentsSizeMismatch {
                declared: 3,
                actual: 2,
                ..
            }
        ),
        "{e}"
    );

    // A source that ends early.
    let mut nar = NarWriter::new(Vec::new());
    let e = nar.file(true, 10, &b"short"[..]).unwrap_err();
    assert!(
        matches!(
            e,
            NarError::ContentsSizeMismatch {
                declared: 10,
                actual: 5,
                ..
            }
        ),
        "{e}"
    );

    // A source that fails.
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let mut nar = NarWriter::new(Vec::new());
    let e = nar.file(false, 1, Failing).unwrap_err();
    assert!(matches!(e, NarError::ContentsSource { .. }), "{e}");

    // A source with more bytes: only `size` are taken.
    let mut nar = NarWriter::new(Vec::new());
    nar.file(false, 6, &b"hello\nand more"[..]).unwrap();
    assert_eq!(nar.finish().unwrap(), hello_nar());

    // Through io::Write.
    let mut nar = NarWriter::new(Vec::new());
    let mut sink = nar.begin_file(false, 6).unwrap();
    sink.write_all(b"hello\n").unwrap();
    assert!(sink.write_all(b"!").is_err());
}

/// A writer that fails after `budget` bytes.
struct FailAfter {
    budget: usize,
}

impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.budget {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
        }
        self.budget -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_reports_output_errors() {
    let mut nar = NarWriter::new(FailAfter { budget: 30 });
    let e = nar.file_from_bytes(false, b"hello\n").unwrap_err();
    assert!(
        matches!(&e, NarError::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe),
        "{e}"
    );
    assert!(matches!(nar.finish(), Err(NarError::WriterMisuse { .. })));
}

// ---- helpers -----------------------------------------------------------------------------

#[test]
fn copy_nar_forwards_exactly_one_nar() {
    let mut stream = tv4_nar();
    stream.extend_from_slice(b"rest");
    let mut source = &stream[..];
    let mut copy = Vec::new();
    assert_eq!(copy_nar(&mut source, &mut copy).unwrap(), 712);
    assert_eq!(copy, tv4_nar());
    assert_eq!(source, b"rest");
}

#[test]
fn copy_nar_refuses_bad_input_and_reports_sink_errors() {
    let bad = Raw::directory_of(&[b"b", b"a"]);
    let e = copy_nar(&bad[..], Vec::new()).unwrap_err();
    assert!(matches!(e, NarError::UnsortedEntries { .. }), "{e}");

    let e = copy_nar(&tv4_nar()[..], FailAfter { budget: 100 }).unwrap_err();
    assert!(
        matches!(&e, NarError::Write { source, .. } if source.kind() == io::ErrorKind::BrokenPipe),
        "{e}"
    );
}

#[test]
fn tee_reader_hashes_while_unpacking() {
    let nar = tv4_nar();
    let dir = tempfile::tempdir().unwrap();
    let mut tee = TeeReader::new(&nar[..], Vec::new());
    unpack(&mut tee, &dir.path().join("out")).unwrap();
    assert!(tee.take_sink_error().is_none());
    let (_, copy) = tee.into_parts();
    assert_eq!(copy, nar);
}

#[test]
fn hash_and_size_refuses_what_the_reader_refuses() {
    let e = hash_and_size(&Raw::directory_of(&[b"."])[..]).unwrap_err();
    assert!(matches!(e, NarError::InvalidEntryName { .. }), "{e}");
    let options = ParseOptions {
        require_eof: true,
        ..ParseOptions::default()
    };
    let mut trailing = hello_nar();
    trailing.extend_from_slice(&[0; 8]);
    let e = hash_and_size_with(&trailing[..], options).unwrap_err();
    assert!(matches!(e, NarError::TrailingData { offset: 120 }), "{e}");
}

// ---- filesystem ----------------------------------------------------------------------------

fn dump_to_vec(path: &Path) -> Result<Vec<u8>, NarError> {
    let mut out = Vec::new();
    let size = dump_path(path, &mut out)?;
    assert_eq!(size, out.len() as u64);
    Ok(out)
}

#[test]
fn unpack_creates_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("d");
    unpack(&tv4_nar()[..], &dest).unwrap();
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"hello\n");
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("a.txt")
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
    assert_eq!(mode(&dest.join("run")) & 0o111, 0o111);
    assert_eq!(mode(&dest.join("a.txt")) & 0o111, 0);
    assert_eq!(dump_to_vec(&dest).unwrap(), tv4_nar());
}

#[test]
fn unpack_refuses_an_existing_destination() {
    let dir = tempfile::tempdir().unwrap();
    let e = unpack(&hello_nar()[..], dir.path()).unwrap_err();
    assert!(matches!(e, NarError::DestinationExists { .. }), "{e}");
    // Not even through a dangling symlink.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    let e = unpack(&hello_nar()[..], &link).unwrap_err();
    assert!(matches!(e, NarError::DestinationExists { .. }), "{e}");
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn unpack_does_not_write_through_symlinks() {
    // A root symlink is created, pointing outside; nothing is written there.
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let nar = Raw::nar()
        .ss(&[
            b"(",
            b"type",
            b"symlink",
            b"target",
            outside.as_os_str().as_bytes(),
            b")",
        ])
        .0;
    unpack(&nar[..], &dir.path().join("l")).unwrap();
    assert_eq!(std::fs::read_link(dir.path().join("l")).unwrap(), outside);
    assert!(!outside.exists());
    // A symlink then a directory of the same name is refused by the parser (duplicate), so
    // no entry can ever be created below a symlink.
    let nar = Raw::nar()
        .ss(&[b"(", b"type", b"directory"])
        .entry(b"a")
        .ss(&[
            b"(",
            b"type",
            b"symlink",
            b"target",
            outside.as_os_str().as_bytes(),
            b")",
        ])
        .s(b")")
        .entry(b"a")
        .ss(&[b"(", b"type", b"directory"])
        .entry(b"f")
        .regular(b"pwned")
        .0;
    let e = unpack(&nar[..], &dir.path().join("d")).unwrap_err();
    assert!(matches!(e, NarError::DuplicateEntry { .. }), "{e}");
    assert!(!outside.exists());
}

#[test]
fn unpack_stops_at_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let e = unpack(
        &Raw::directory_of(&[b"a", b".."])[..],
        &dir.path().join("d"),
    )
    .unwrap_err();
    assert!(matches!(e, NarError::InvalidEntryName { .. }), "{e}");
    // What came before the bad entry is left for the caller to remove.
    assert_eq!(std::fs::read(dir.path().join("d/a")).unwrap(), b"x");
    // A missing parent is an fs error naming the path.
    let e = unpack(&hello_nar()[..], &dir.path().join("no/such")).unwrap_err();
    assert!(
        matches!(&e, NarError::Fs { path, .. } if path.ends_with("no/such")),
        "{e}"
    );
}

#[test]
fn dump_path_handles_every_root_type() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"hello\n").unwrap();
    assert_eq!(dump_to_vec(&file).unwrap(), hello_nar());

    // The x bit that counts is the owner's.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o611)).unwrap();
    assert_eq!(dump_to_vec(&file).unwrap(), hello_nar());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut nar = NarWriter::new(Vec::new());
    nar.file_from_bytes(true, b"hello\n").unwrap();
    assert_eq!(dump_to_vec(&file).unwrap(), nar.finish().unwrap());

    // A root symlink is stored, not followed.
    let link = dir.path().join("l");
    std::os::unix::fs::symlink("f", &link).unwrap();
    let expected = Raw::nar()
        .ss(&[b"(", b"type", b"symlink", b"target", b"f", b")"])
        .0;
    assert_eq!(dump_to_vec(&link).unwrap(), expected);

    // An empty directory.
    let empty = dir.path().join("e");
    std::fs::create_dir(&empty).unwrap();
    let expected = Raw::nar().ss(&[b"(", b"type", b"directory", b")"]).0;
    assert_eq!(dump_to_vec(&empty).unwrap(), expected);
}

#[test]
fn dump_path_refuses_other_file_types() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir(&tree).unwrap();
    let socket = tree.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let e = dump_to_vec(&tree).unwrap_err();
    assert!(
        matches!(&e, NarError::UnsupportedFileType { path } if *path == socket),
        "{e}"
    );
    assert!(e.to_string().contains("sock"));

    let e = dump_to_vec(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(e, NarError::Fs { .. }), "{e}");
}

#[test]
fn dump_path_sorts_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir(&tree).unwrap();
    for name in [&b"b"[..], b"B", b"\xff", b"a", b"A0"] {
        std::fs::write(tree.join(std::ffi::OsStr::from_bytes(name)), name).unwrap();
    }
    let names: Vec<Vec<u8>> = events(&dump_to_vec(&tree).unwrap())
        .unwrap()
        .into_iter()
        .filter_map(|event| match event {
            Owned::File(path, _, _) => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![
            b"A0".to_vec(),
            b"B".to_vec(),
            b"a".to_vec(),
            b"b".to_vec(),
            b"\xff".to_vec()
        ]
    );
}

// ---- property tests ----------------------------------------------------------------------

/// A file tree as the NAR format sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(Entries),
}

/// A directory's entries by name; `BTreeMap` orders byte strings as the NAR does.
type Entries = BTreeMap<Vec<u8>, Tree>;

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => b'a'..=b'e',
        1 => 1u8..b'/',
        1 => (b'/' + 1)..=255u8,
    ];
    prop::collection::vec(byte, 1..8).prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    let file = (any::<bool>(), prop::collection::vec(any::<u8>(), 0..100)).prop_map(
        |(executable, contents)| Tree::File {
            executable,
            contents,
        },
    );
    let symlink = prop::collection::vec(1u8..=255, 1..20).prop_map(Tree::Symlink);
    let leaf = prop_oneof![3 => file, 1 => symlink];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop::collection::btree_map(name_strategy(), inner, 0..6).prop_map(Tree::Directory)
    })
}

fn write_tree<W: Write>(nar: &mut NarWriter<W>, tree: &Tree) {
    match tree {
        Tree::File {
            executable,
            contents,
        } => nar
            .file(*executable, contents.len() as u64, &contents[..])
            .unwrap(),
        Tree::Symlink(target) => nar.symlink(target).unwrap(),
        Tree::Directory(entries) => {
            nar.directory().unwrap();
            for (name, child) in entries {
                nar.entry(name).unwrap();
                write_tree(nar, child);
            }
            nar.end_directory().unwrap();
        }
    }
}

fn tree_to_nar(tree: &Tree) -> Vec<u8> {
    let mut nar = NarWriter::new(Vec::new());
    write_tree(&mut nar, tree);
    nar.finish().unwrap()
}

/// Rebuilds the tree from the reader's events, with an explicit stack.
fn nar_to_tree(bytes: &[u8]) -> Result<Tree, NarError> {
    let mut stack: Vec<(Vec<u8>, Entries)> = Vec::new();
    let mut root = None;
    let mut reader = NarReader::new(bytes);
    while let Some(event) = reader.next()? {
        let (name, node) = match event {
            Event::Directory { path } => {
                stack.push((path.file_name().to_vec(), BTreeMap::new()));
                continue;
            }
            Event::DirectoryEnd { .. } => {
                let (name, entries) = stack.pop().unwrap();
                (name, Tree::Directory(entries))
            }
            Event::Symlink { path, target } => {
                (path.file_name().to_vec(), Tree::Symlink(target.to_vec()))
            }
            Event::File {
                path,
                executable,
                mut contents,
                ..
            } => {
                let data = read_all(&mut contents)?;
                (
                    path.file_name().to_vec(),
                    Tree::File {
                        executable,
                        contents: data,
                    },
                )
            }
        };
        match stack.last_mut() {
            Some((_, entries)) => {
                entries.insert(name, node);
            }
            None => root = Some(node),
        }
    }
    assert_eq!(reader.offset(), bytes.len() as u64);
    Ok(root.unwrap())
}

proptest! {
    #[test]
    fn written_trees_read_back_identically(tree in tree_strategy()) {
        let bytes = tree_to_nar(&tree);
        prop_assert_eq!(nar_to_tree(&bytes).unwrap(), tree);
        let (digest, size) = hash_and_size(&bytes[..]).unwrap();
        prop_assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
        prop_assert_eq!(size, bytes.len() as u64);
        // Trickled input parses the same.
        let mut reader = NarReader::new(Trickle(&bytes));
        reader.skip_to_end().unwrap();
        prop_assert_eq!(reader.offset(), size);
    }

    #[test]
    fn truncations_and_bit_flips_never_panic(
        tree in tree_strategy(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let bytes = tree_to_nar(&tree);
        let cut = cut.index(bytes.len());
        prop_assert!(events(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        let at = flip.index(bytes.len());
        flipped[at] ^= 0x01;
        // Whatever happens, no panic; when accepted, it re-serialises to the same bytes.
        if let Ok(tree) = nar_to_tree(&flipped) {
            prop_assert_eq!(tree_to_nar(&tree), flipped);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn unpack_then_dump_reproduces_the_nar(tree in tree_strategy()) {
        let bytes = tree_to_nar(&tree);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        unpack(&bytes[..], &dest).unwrap();
        prop_assert_eq!(dump_to_vec(&dest).unwrap(), bytes);
    }
}

#[test]
fn dump_path_to_fd_sends_large_files_with_sendfile_and_writes_the_same_nar() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir(&tree).unwrap();
    // Files below, at and well above the size from which contents go by sendfile, with sizes
    // that need padding, around small ones that go through the buffer.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 5).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("a-small"), b"small\n").unwrap();
    std::fs::write(tree.join("b-big"), &big).unwrap();
    std::fs::write(tree.join("c-limit"), vec![7u8; 64 * 1024]).unwrap();
    std::fs::write(tree.join("d-empty"), b"").unwrap();
    std::os::unix::fs::symlink("b-big", tree.join("e-link")).unwrap();
    let expected = dump_to_vec(&tree).unwrap();
    let out_path = dir.path().join("out.nar");
    let out = std::fs::File::create(&out_path).unwrap();
    let size = crate::nar::dump_path_to_fd(&tree, &out).unwrap();
    drop(out);
    let sent = std::fs::read(&out_path).unwrap();
    assert_eq!(size, sent.len() as u64);
    assert!(sent == expected, "the NAR written with sendfile differs");
}
