//! NAR parsing from arbitrary bytes: `NarReader` event by event, `hash_and_size`, `copy_nar`.
//!
//! Besides "never panics", it checks what the reader promises: the three entry points agree on
//! whether the input is a NAR and how long it is, the hash is SHA-256 of exactly those bytes,
//! and (the format being canonical) writing the events back with `NarWriter` reproduces them
//! byte for byte. The same bytes are also parsed under tight limits so the limit paths run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use ward_proto::nar::{
    copy_nar, hash_and_size, Event, NarError, NarReader, NarWriter, ParseOptions,
};

/// Parses `data` event by event, reading file contents in `chunk`-byte pieces and leaving every
/// third file partly unread (the reader must skip the rest), and re-serialises the events.
/// Returns the NAR's size and the re-serialised bytes (`None` once a file was left unread).
fn parse_and_rewrite(
    data: &[u8],
    options: ParseOptions,
    chunk: usize,
) -> Result<(u64, Option<Vec<u8>>), NarError> {
    let mut reader = NarReader::with_options(data, options);
    let mut writer = Some(NarWriter::new(Vec::new()));
    let mut files = 0u64;
    let mut buf = vec![0u8; chunk];
    loop {
        let event = match reader.next() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => {
                // A failed reader stays failed, and says so instead of panicking.
                assert!(matches!(reader.next(), Err(NarError::UsedAfterError)));
                return Err(e);
            }
        };
        let path = event.path();
        if let (Some(w), false, false) = (
            writer.as_mut(),
            path.is_root(),
            matches!(event, Event::DirectoryEnd { .. }),
        ) {
            w.entry(path.file_name())
                .expect("an entry name the reader accepted");
        }
        match event {
            Event::Directory { .. } => {
                if let Some(w) = writer.as_mut() {
                    w.directory()
                        .expect("a directory where the reader found one");
                }
            }
            Event::DirectoryEnd { .. } => {
                if let Some(w) = writer.as_mut() {
                    w.end_directory().expect("the end of an open directory");
                }
            }
            Event::Symlink { target, .. } => {
                if let Some(w) = writer.as_mut() {
                    w.symlink(target)
                        .expect("a symlink target the reader accepted");
                }
            }
            Event::File {
                executable,
                size,
                mut contents,
                ..
            } => {
                files += 1;
                let read_all = !files.is_multiple_of(3);
                let mut got = 0u64;
                let mut sink = match writer.as_mut() {
                    Some(w) if read_all => Some(w.begin_file(executable, size).expect("file")),
                    _ => None,
                };
                loop {
                    let n = contents.read_chunk(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if let Some(s) = sink.as_mut() {
                        s.write_chunk(&buf[..n])
                            .expect("no more than the declared size");
                    }
                    if !read_all {
                        break;
                    }
                }
                assert_eq!(got + contents.remaining(), size, "contents accounting");
                if read_all {
                    assert_eq!(got, size, "a fully read file yields its declared size");
                }
                match sink {
                    Some(s) => s.finish().expect("all contents written"),
                    // The rest is left for the reader to skip; the rewrite cannot be completed.
                    None => writer = None,
                }
            }
        }
    }
    assert!(reader.is_done());
    let rewritten = writer.map(|w| w.finish().expect("a complete nar"));
    Ok((reader.offset(), rewritten))
}

fuzz_target!(|data: &[u8]| {
    let chunk = 1 + data.len() % 13;
    let parsed = parse_and_rewrite(data, ParseOptions::default(), chunk);
    let hashed = hash_and_size(data);
    let mut copy = Vec::new();
    let copied = copy_nar(data, &mut copy);
    match (&parsed, &hashed, &copied) {
        (Ok((size, rewritten)), Ok((hash, hashed_size)), Ok(copied_size)) => {
            let nar = &data[..*size as usize];
            assert_eq!(size, hashed_size);
            assert_eq!(size, copied_size);
            assert_eq!(copy, nar, "copy_nar forwards exactly the nar");
            assert_eq!(hash, &<[u8; 32]>::from(Sha256::digest(nar)));
            if let Some(rewritten) = rewritten {
                assert_eq!(rewritten.as_slice(), nar, "a valid nar is canonical");
            }
        }
        (Err(_), Err(_), Err(_)) => {
            // Every error has a message, and rendering it must not panic.
            let _ = parsed.unwrap_err().to_string();
        }
        _ => panic!(
            "entry points disagree: events {:?}, hash_and_size {:?}, copy_nar {:?}",
            parsed.as_ref().map(|p| p.0),
            hashed.as_ref().map(|h| h.1),
            copied
        ),
    }

    // Tight limits: exercises every limit check on the same input.
    let tight = ParseOptions {
        max_depth: 3,
        max_file_size: 64,
        max_name_len: 8,
        max_target_len: 16,
        max_directory_entries: 4,
        max_nodes: 12,
        require_eof: true,
    };
    if let Ok((size, _)) = parse_and_rewrite(data, tight, chunk) {
        assert_eq!(
            size as usize,
            data.len(),
            "require_eof accepts only the whole input"
        );
    }
});
