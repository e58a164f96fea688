//! NAR throughput on a 256 MiB tree (a few big files, many small ones):
//!
//! * `dump_path+sha256`: serialise the tree from disk (page cache) into a hashing sink;
//! * `hash_and_size`: parse, validate and SHA-256 the serialised NAR held in memory;
//! * `sha256_only`: plain SHA-256 of the same bytes, the ceiling for the line above.
//!
//! Set `WARD_NAR_BENCH_OUT=FILE` to also write the NAR to FILE (e.g. to time `sha256sum`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use sha2::{Digest, Sha256};
use ward_proto::nar;

const MIB: usize = 1024 * 1024;
const BIG_FILES: [usize; 3] = [96 * MIB, 64 * MIB, 32 * MIB];
const SMALL_DIRS: usize = 128;
const SMALL_FILES_PER_DIR: usize = 128;
/// Small files share what is left of the 256 MiB.
const SMALL_TOTAL: usize = 256 * MIB - 192 * MIB;

/// Fast deterministic filler (xorshift); the contents do not matter to SHA-256.
fn fill(buf: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

fn build_tree(root: &Path) -> usize {
    fs::create_dir(root).unwrap();
    let mut total = 0;
    let mut data = vec![0u8; BIG_FILES[0]];
    for (i, &size) in BIG_FILES.iter().enumerate() {
        fill(&mut data[..size], i as u64 + 1);
        fs::write(root.join(format!("big-{i}.bin")), &data[..size]).unwrap();
        total += size;
    }
    // Sizes from 0 to 2 * average - 1 bytes, summing to SMALL_TOTAL.
    let count = SMALL_DIRS * SMALL_FILES_PER_DIR;
    let average = SMALL_TOTAL / count;
    let mut small_sizes: Vec<usize> = (0..count).map(|i| (i * 7919) % (2 * average)).collect();
    let shortfall = SMALL_TOTAL - small_sizes.iter().sum::<usize>();
    small_sizes[0] += shortfall;
    let mut index = 0;
    for d in 0..SMALL_DIRS {
        let dir = root.join(format!("dir-{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..SMALL_FILES_PER_DIR {
            let size = small_sizes[index];
            index += 1;
            let path = dir.join(format!("file-{f:03}"));
            fs::write(&path, &data[f * 64..f * 64 + size]).unwrap();
            if f % 16 == 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            }
            total += size;
        }
        std::os::unix::fs::symlink("file-000", dir.join("link")).unwrap();
    }
    total
}

/// Counts and hashes what is written, like a store writer checking an upload.
#[derive(Default)]
struct HashingSink {
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn nar_benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let content_bytes = build_tree(&tree);
    assert_eq!(content_bytes, 256 * MIB);

    let mut nar_bytes = Vec::with_capacity(content_bytes + 8 * MIB);
    nar::dump_path(&tree, &mut nar_bytes).unwrap();
    let nar_size = nar_bytes.len() as u64;
    if let Some(out) = std::env::var_os("WARD_NAR_BENCH_OUT") {
        fs::write(&out, &nar_bytes).unwrap();
        eprintln!(
            "wrote the {nar_size}-byte nar to {}",
            Path::new(&out).display()
        );
    }
    let expected = <[u8; 32]>::from(Sha256::digest(&nar_bytes));

    let mut group = c.benchmark_group("nar-256MiB");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Bytes(nar_size));

    group.bench_function("dump_path+sha256", |b| {
        b.iter(|| {
            let mut sink = HashingSink::default();
            let size = nar::dump_path(&tree, &mut sink).unwrap();
            assert_eq!((size, sink.bytes), (nar_size, nar_size));
            sink.hasher.finalize()
        })
    });
    group.bench_function("hash_and_size", |b| {
        b.iter(|| {
            let (digest, size) = nar::hash_and_size(&nar_bytes[..]).unwrap();
            assert_eq!((digest, size), (expected, nar_size));
            digest
        })
    });
    group.bench_function("sha256_only", |b| b.iter(|| Sha256::digest(&nar_bytes)));
    group.finish();
}

criterion_group!(benches, nar_benches);
criterion_main!(benches);
