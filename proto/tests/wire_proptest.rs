//! Property tests for every wire type (encode → decode is the identity), and bad-input tests:
//! truncation at every prefix, lengths and counts near 2^64, non-zero padding, invalid UTF-8,
//! non-boolean values in strict fields, oversized integers, and arbitrary bytes fed to every
//! decoder. Every failure must be a typed error; nothing may panic or allocate what the input
//! announces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::PathBuf;

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use tokio::io::AsyncReadExt;
use ward_proto::content_address::{ContentAddress, ContentAddressMethod, FileIngestionMethod};
use ward_proto::hash::{Hash, HashAlgo};
use ward_proto::nix32;
use ward_proto::store_path::{StoreDir, StorePath};
use ward_proto::wire::{put_framed, FramedReader, Limits, WireError, WireReader, WireWriter};
use ward_proto::worker::types::*;
use ward_proto::worker::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn reader(bytes: &[u8]) -> WireReader<Cursor<Vec<u8>>> {
    WireReader::new(Cursor::new(bytes.to_vec()))
}

fn ctx(minor: u8, features: &[&str]) -> WireContext {
    WireContext::with_features(
        StoreDir::default(),
        ProtocolVersion::v1(minor),
        features.iter().map(|f| f.to_string()).collect(),
    )
}

const BOTH_FEATURES: &[&str] = &[
    FEATURE_REALISATION_WITH_PATH_NOT_HASH,
    FEATURE_DELETE_DEAD_SPECIFIC_REFERRERS,
];

// ---------------------------------------------------------------------------------------------
// Strategies

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+_?=][a-zA-Z0-9+._?=-]{0,15}"
}

fn store_path() -> impl Strategy<Value = StorePath> {
    (vec(0usize..32, 32), name()).prop_map(|(hash, name)| {
        let hash: String = hash
            .into_iter()
            .map(|i| nix32::ALPHABET[i] as char)
            .collect();
        StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
    })
}

fn drv_path() -> impl Strategy<Value = StorePath> {
    store_path().prop_map(|p| StorePath::from_base_name(&format!("{}.drv", p.base_name())).unwrap())
}

fn paths() -> impl Strategy<Value = BTreeSet<StorePath>> {
    btree_set(store_path(), 0..4)
}

fn algo() -> impl Strategy<Value = HashAlgo> {
    prop_oneof![
        Just(HashAlgo::Md5),
        Just(HashAlgo::Sha1),
        Just(HashAlgo::Sha256),
        Just(HashAlgo::Sha512)
    ]
}

fn hash_of(algo: HashAlgo) -> impl Strategy<Value = Hash> {
    vec(any::<u8>(), algo.size()).prop_map(move |d| Hash::from_digest(algo, &d).unwrap())
}

fn hash() -> impl Strategy<Value = Hash> {
    algo().prop_flat_map(hash_of)
}

fn sha256() -> impl Strategy<Value = Hash> {
    hash_of(HashAlgo::Sha256)
}

fn ingestion() -> impl Strategy<Value = FileIngestionMethod> {
    prop_oneof![
        Just(FileIngestionMethod::Flat),
        Just(FileIngestionMethod::Recursive),
        Just(FileIngestionMethod::Git)
    ]
}

fn content_address() -> impl Strategy<Value = ContentAddress> {
    prop_oneof![
        sha256().prop_map(|hash| ContentAddress {
            method: ContentAddressMethod::Text,
            hash
        }),
        (ingestion(), hash()).prop_map(|(m, hash)| ContentAddress {
            method: ContentAddressMethod::Fixed(m),
            hash
        }),
    ]
}

fn ca_method() -> impl Strategy<Value = CaMethodWithAlgo> {
    prop_oneof![
        Just(CaMethodWithAlgo {
            method: ContentAddressMethod::Text,
            algo: HashAlgo::Sha256
        }),
        (ingestion(), algo()).prop_map(|(m, algo)| CaMethodWithAlgo {
            method: ContentAddressMethod::Fixed(m),
            algo
        }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn sigs() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set("[a-z0-9.-]{1,8}:[A-Za-z0-9+/=]{4,12}", 0..3)
}

fn time() -> impl Strategy<Value = u64> {
    0..=i64::MAX as u64
}

fn unkeyed_info() -> impl Strategy<Value = UnkeyedPathInfo> {
    (
        proptest::option::of(store_path()),
        sha256(),
        paths(),
        time(),
        any::<u64>(),
        any::<bool>(),
        sigs(),
        proptest::option::of(content_address()),
    )
        .prop_map(
            |(deriver, nar_hash, references, registration_time, nar_size, ultimate, sigs, ca)| {
                UnkeyedPathInfo {
                    deriver,
                    nar_hash,
                    references,
                    registration_time: registration_time as i64,
                    nar_size,
                    ultimate,
                    sigs,
                    ca,
                }
            },
        )
}

fn path_info() -> impl Strategy<Value = ValidPathInfo> {
    (store_path(), unkeyed_info()).prop_map(|(path, info)| info.with_path(path))
}

fn outputs_spec() -> impl Strategy<Value = OutputsSpec> {
    prop_oneof![
        Just(OutputsSpec::All),
        btree_set(name(), 1..3).prop_map(OutputsSpec::Names)
    ]
}

/// Derived paths representable at 1.30+ (all of them).
fn derived_path() -> impl Strategy<Value = DerivedPath> {
    prop_oneof![
        store_path().prop_map(DerivedPath::Opaque),
        (drv_path(), outputs_spec())
            .prop_map(|(drv_path, outputs)| DerivedPath::Built { drv_path, outputs }),
    ]
}

/// Derived paths that mean the same below 1.30: opaque non-derivations and built derivations.
fn old_derived_path() -> impl Strategy<Value = DerivedPath> {
    prop_oneof![
        store_path()
            .prop_filter("not a drv", |p| !p.is_derivation())
            .prop_map(DerivedPath::Opaque),
        (drv_path(), outputs_spec())
            .prop_map(|(drv_path, outputs)| DerivedPath::Built { drv_path, outputs }),
    ]
}

fn single_derived_path() -> impl Strategy<Value = SingleDerivedPath> {
    store_path()
        .prop_map(SingleDerivedPath::Opaque)
        .prop_recursive(4, 8, 1, |inner| {
            (inner, name()).prop_map(|(drv, output)| SingleDerivedPath::Built {
                drv_path: Box::new(drv),
                output,
            })
        })
}

fn drv_output_id() -> impl Strategy<Value = DrvOutput> {
    (hash(), name()).prop_map(|(drv_hash, output)| DrvOutput { drv_hash, output })
}

fn realisation() -> impl Strategy<Value = Realisation> {
    (
        drv_output_id(),
        store_path(),
        sigs(),
        btree_map(drv_output_id(), store_path(), 0..3),
    )
        .prop_map(
            |(id, out_path, signatures, dependent_realisations)| Realisation {
                id,
                out_path,
                signatures,
                dependent_realisations,
            },
        )
}

fn drv_output() -> impl Strategy<Value = DrvPathOutput> {
    (drv_path(), name()).prop_map(|(drv_path, output_name)| DrvPathOutput {
        drv_path,
        output_name,
    })
}

fn unkeyed_realisation() -> impl Strategy<Value = UnkeyedRealisation> {
    (store_path(), sigs()).prop_map(|(out_path, signatures)| UnkeyedRealisation {
        out_path,
        signatures,
    })
}

fn keyed_realisation() -> impl Strategy<Value = PathRealisation> {
    (drv_output(), unkeyed_realisation()).prop_map(|(key, value)| PathRealisation { key, value })
}

fn status() -> impl Strategy<Value = BuildStatus> {
    (0u64..15).prop_map(|c| BuildStatus::from_code(c).unwrap())
}

/// A build result that survives the JSON layout exactly: each output keyed by its id's name.
fn build_result_json() -> impl Strategy<Value = BuildResult> {
    (
        status(),
        text(),
        any::<u32>(),
        any::<bool>(),
        time(),
        time(),
        proptest::option::of(time()),
        proptest::option::of(time()),
        vec(realisation(), 0..3),
    )
        .prop_map(
            |(status, msg, times, nondet, start, stop, cpu_user, cpu_system, outputs)| {
                let mut r = BuildResult::new(status, msg);
                r.times_built = times;
                r.is_non_deterministic = nondet;
                r.start_time = start;
                r.stop_time = stop;
                r.cpu_user_micros = cpu_user;
                r.cpu_system_micros = cpu_system;
                for o in outputs {
                    // Keys in the JSON layout are id strings; keep them unique.
                    if !r
                        .built_outputs
                        .values()
                        .any(|x| x.id.to_string() == o.id.to_string())
                    {
                        r.built_outputs.insert(o.id.output.clone(), o);
                    }
                }
                r
            },
        )
}

/// A build result that survives the binary layout exactly.
fn build_result_binary() -> impl Strategy<Value = BuildResult> {
    (
        build_result_json(),
        btree_map(name(), unkeyed_realisation(), 0..3),
    )
        .prop_map(|(mut r, outs)| {
            r.built_outputs = outs
                .into_iter()
                .map(|(name, u)| {
                    let realisation = Realisation {
                        id: placeholder_drv_output(name.clone()),
                        out_path: u.out_path,
                        signatures: u.signatures,
                        dependent_realisations: BTreeMap::new(),
                    };
                    (name, realisation)
                })
                .collect();
            r
        })
}

fn basic_derivation() -> impl Strategy<Value = BasicDerivation> {
    (
        btree_map(name(), (text(), text(), text()), 0..3),
        paths(),
        text(),
        text(),
        vec(text(), 0..3),
        btree_map(text(), text(), 0..3),
    )
        .prop_map(
            |(outputs, input_srcs, platform, builder, args, env)| BasicDerivation {
                outputs: outputs
                    .into_iter()
                    .map(|(n, (path, hash_algo, hash))| {
                        (
                            n,
                            WireDerivationOutput {
                                path,
                                hash_algo,
                                hash,
                            },
                        )
                    })
                    .collect(),
                input_srcs,
                platform,
                builder,
                args,
                env,
            },
        )
}

fn build_mode() -> impl Strategy<Value = BuildMode> {
    prop_oneof![
        Just(BuildMode::Normal),
        Just(BuildMode::Repair),
        Just(BuildMode::Check)
    ]
}

fn gc_action() -> impl Strategy<Value = GcAction> {
    prop_oneof![
        Just(GcAction::ReturnLive),
        Just(GcAction::ReturnDead),
        Just(GcAction::DeleteDead),
        Just(GcAction::DeleteSpecific)
    ]
}

fn verbosity() -> impl Strategy<Value = Verbosity> {
    (0u64..8).prop_map(Verbosity::from_code_saturating)
}

fn set_options() -> impl Strategy<Value = SetOptions> {
    (
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            verbosity(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            any::<bool>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
        ),
        btree_map(name(), text(), 0..4),
    )
        .prop_map(
            |(
                (kf, kg, fb, verbosity, jobs, silent),
                (hook, vb, lt, pbt, cores, subst),
                overrides,
            )| {
                SetOptions {
                    keep_failed: kf,
                    keep_going: kg,
                    try_fallback: fb,
                    verbosity,
                    max_build_jobs: jobs,
                    max_silent_time: silent,
                    use_build_hook: hook,
                    verbose_build: vb,
                    log_type: lt,
                    print_build_trace: pbt,
                    build_cores: cores,
                    use_substitutes: subst,
                    overrides,
                    rejected_overrides: Vec::new(),
                }
            },
        )
}

fn fs_path() -> impl Strategy<Value = PathBuf> {
    vec(any::<u8>(), 0..20).prop_map(|b| {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(b))
    })
}

fn log_field() -> impl Strategy<Value = LogField> {
    prop_oneof![
        any::<u64>().prop_map(LogField::Int),
        vec(any::<u8>(), 0..12).prop_map(LogField::String)
    ]
}

fn stderr_message() -> impl Strategy<Value = StderrMessage> {
    prop_oneof![
        vec(any::<u8>(), 0..20).prop_map(StderrMessage::Next),
        any::<u64>().prop_map(StderrMessage::Read),
        vec(any::<u8>(), 0..20).prop_map(StderrMessage::Write),
        Just(StderrMessage::Last),
        (verbosity(), text(), vec(text(), 0..3)).prop_map(|(level, message, traces)| {
            StderrMessage::Error(DaemonError {
                level,
                message,
                traces,
                exit_status: 1,
            })
        }),
        (
            any::<u64>(),
            verbosity(),
            any::<u32>(),
            text(),
            vec(log_field(), 0..4),
            any::<u64>()
        )
            .prop_map(|(id, level, t, text, fields, parent)| {
                StderrMessage::StartActivity(StartActivity {
                    id,
                    level,
                    activity_type: ActivityType::from_code(t),
                    text,
                    fields,
                    parent,
                })
            }),
        any::<u64>().prop_map(StderrMessage::StopActivity),
        (any::<u64>(), any::<u32>(), vec(log_field(), 0..4)).prop_map(|(id, t, fields)| {
            StderrMessage::Result(ActivityResult {
                id,
                result_type: ResultType::from_code(t),
                fields,
            })
        }),
    ]
}

/// Requests valid at 1.34 (what Nix 2.8 speaks) and later, without features.
fn request_1_34() -> impl Strategy<Value = Request> {
    let simple = prop_oneof![
        store_path().prop_map(|path| Request::IsValidPath(IsValidPath { path })),
        store_path().prop_map(|path| Request::HasSubstitutes(HasSubstitutes { path })),
        store_path().prop_map(|path| Request::QueryPathHash(QueryPathHash { path })),
        store_path().prop_map(|path| Request::QueryReferences(QueryReferences { path })),
        store_path().prop_map(|path| Request::QueryReferrers(QueryReferrers { path })),
        store_path().prop_map(|path| Request::EnsurePath(EnsurePath { path })),
        store_path().prop_map(|path| Request::AddTempRoot(AddTempRoot { path })),
        store_path().prop_map(|path| Request::QueryDeriver(QueryDeriver { path })),
        store_path().prop_map(|path| Request::QuerySubstitutablePathInfo(
            QuerySubstitutablePathInfo { path }
        )),
        store_path()
            .prop_map(|path| Request::QueryDerivationOutputs(QueryDerivationOutputs { path })),
        store_path().prop_map(|path| Request::QueryPathInfo(QueryPathInfo { path })),
        store_path().prop_map(|path| Request::QueryDerivationOutputNames(
            QueryDerivationOutputNames { path }
        )),
        store_path().prop_map(|path| Request::QueryValidDerivers(QueryValidDerivers { path })),
        store_path().prop_map(|path| Request::NarFromPath(NarFromPath { path })),
        store_path()
            .prop_map(|path| Request::QueryDerivationOutputMap(QueryDerivationOutputMap { path })),
        Just(Request::SyncWithGC(SyncWithGC)),
        Just(Request::FindRoots(FindRoots)),
        Just(Request::QueryAllValidPaths(QueryAllValidPaths)),
        Just(Request::QueryFailedPaths(QueryFailedPaths)),
        Just(Request::ClearFailedPaths(ClearFailedPaths)),
        Just(Request::ImportPaths(ImportPaths)),
        Just(Request::OptimiseStore(OptimiseStore)),
    ];
    let complex = prop_oneof![
        (name(), ca_method(), paths(), any::<bool>()).prop_map(
            |(name, method, references, repair)| {
                Request::AddToStore(AddToStore::Current {
                    name,
                    method,
                    references,
                    repair,
                })
            }
        ),
        (name(), vec(any::<u8>(), 0..40), paths()).prop_map(|(name, text, references)| {
            Request::AddTextToStore(AddTextToStore {
                name,
                text,
                references,
            })
        }),
        (vec(derived_path(), 0..4), build_mode())
            .prop_map(|(paths, mode)| Request::BuildPaths(BuildPaths { paths, mode })),
        fs_path().prop_map(|path| Request::AddIndirectRoot(AddIndirectRoot { path })),
        (store_path(), any::<u32>())
            .prop_map(|(path, sign)| Request::ExportPath(ExportPath { path, sign })),
        set_options().prop_map(Request::SetOptions),
        (gc_action(), paths(), any::<bool>(), any::<u64>()).prop_map(
            |(action, paths, ignore_liveness, max_freed)| {
                let paths = if paths.is_empty() && action != GcAction::DeleteSpecific {
                    GcPaths::WholeStore
                } else {
                    GcPaths::Specific {
                        paths,
                        delete_referrers: false,
                    }
                };
                Request::CollectGarbage(CollectGarbageRequest {
                    action,
                    paths,
                    ignore_liveness,
                    max_freed,
                })
            }
        ),
        "[0-9a-z]{0,40}".prop_map(|hash_part| Request::QueryPathFromHashPart(
            QueryPathFromHashPart { hash_part }
        )),
        btree_map(store_path(), proptest::option::of(content_address()), 0..3).prop_map(|paths| {
            Request::QuerySubstitutablePathInfos(QuerySubstitutablePathInfos { paths })
        }),
        (paths(), any::<bool>()).prop_map(|(paths, substitute)| Request::QueryValidPaths(
            QueryValidPaths { paths, substitute }
        )),
        paths()
            .prop_map(|paths| Request::QuerySubstitutablePaths(QuerySubstitutablePaths { paths })),
        (any::<bool>(), any::<bool>()).prop_map(|(check_contents, repair)| {
            Request::VerifyStore(VerifyStore {
                check_contents,
                repair,
            })
        }),
        (drv_path(), basic_derivation(), build_mode()).prop_map(|(drv_path, drv, mode)| {
            Request::BuildDerivation(BuildDerivation {
                drv_path,
                drv,
                mode,
            })
        }),
        (store_path(), sigs())
            .prop_map(|(path, sigs)| Request::AddSignatures(AddSignatures { path, sigs })),
        (path_info(), any::<bool>(), any::<bool>()).prop_map(|(info, repair, dont_check_sigs)| {
            Request::AddToStoreNar(AddToStoreNar {
                info,
                repair,
                dont_check_sigs,
            })
        }),
        vec(derived_path(), 0..4)
            .prop_map(|targets| Request::QueryMissing(QueryMissing { targets })),
        realisation().prop_map(|r| Request::RegisterDrvOutput(RegisterDrvOutput::Json(r))),
        drv_output_id().prop_map(|id| Request::QueryRealisation(QueryRealisation::Id(id))),
        (any::<bool>(), any::<bool>()).prop_map(|(repair, dont_check_sigs)| {
            Request::AddMultipleToStore(AddMultipleToStore {
                repair,
                dont_check_sigs,
            })
        }),
        drv_path().prop_map(|drv_path| Request::AddBuildLog(AddBuildLog { drv_path })),
        (vec(derived_path(), 0..4), build_mode()).prop_map(|(paths, mode)| {
            Request::BuildPathsWithResults(BuildPathsWithResults { paths, mode })
        }),
        (store_path(), fs_path())
            .prop_map(|(path, gc_root)| Request::AddPermRoot(AddPermRoot { path, gc_root })),
        (single_derived_path(), name())
            .prop_map(|(path, output)| Request::SubmitOutput(SubmitOutput { path, output })),
        (name(), ca_method()).prop_map(|(name, method)| Request::AddToStoreScanning(
            AddToStoreScanning { name, method }
        )),
    ];
    prop_oneof![simple, complex]
}

/// Requests whose layout depends on the realisation / GC features.
fn request_with_features() -> impl Strategy<Value = Request> {
    prop_oneof![
        keyed_realisation().prop_map(|r| Request::RegisterDrvOutput(RegisterDrvOutput::Binary(r))),
        drv_output().prop_map(|o| Request::QueryRealisation(QueryRealisation::Output(o))),
        (
            gc_action(),
            prop_oneof![
                Just(GcPaths::WholeStore),
                (paths(), any::<bool>()).prop_map(|(paths, delete_referrers)| GcPaths::Specific {
                    paths,
                    delete_referrers
                }),
            ],
            any::<bool>(),
            any::<u64>()
        )
            .prop_map(|(action, paths, ignore_liveness, max_freed)| {
                Request::CollectGarbage(CollectGarbageRequest {
                    action,
                    paths,
                    ignore_liveness,
                    max_freed,
                })
            }),
    ]
}

fn substitutable() -> impl Strategy<Value = SubstitutablePathInfo> {
    (
        proptest::option::of(store_path()),
        paths(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(deriver, references, download_size, nar_size)| SubstitutablePathInfo {
                deriver,
                references,
                download_size,
                nar_size,
            },
        )
}

fn reply_no_features() -> impl Strategy<Value = Reply> {
    let a = prop_oneof![
        any::<bool>().prop_map(Reply::IsValidPath),
        any::<bool>().prop_map(Reply::HasSubstitutes),
        sha256().prop_map(Reply::QueryPathHash),
        paths().prop_map(Reply::QueryReferences),
        paths().prop_map(Reply::QueryReferrers),
        path_info().prop_map(|i| Reply::AddToStore(AddToStoreReply::PathInfo(Box::new(i)))),
        store_path().prop_map(Reply::AddTextToStore),
        Just(Reply::BuildPaths),
        Just(Reply::EnsurePath),
        Just(Reply::AddTempRoot),
        Just(Reply::AddIndirectRoot),
        Just(Reply::SyncWithGC),
        vec((fs_path(), store_path()), 0..3).prop_map(|v| Reply::FindRoots(
            v.into_iter()
                .map(|(link, target)| GcRoot { link, target })
                .collect()
        )),
        Just(Reply::ExportPath),
        proptest::option::of(store_path()).prop_map(Reply::QueryDeriver),
        Just(Reply::SetOptions),
        (btree_set(text(), 0..3), any::<u64>()).prop_map(|(paths, bytes_freed)| {
            Reply::CollectGarbage(GcResult { paths, bytes_freed })
        }),
    ];
    let b = prop_oneof![
        proptest::option::of(substitutable()).prop_map(Reply::QuerySubstitutablePathInfo),
        paths().prop_map(Reply::QueryDerivationOutputs),
        paths().prop_map(Reply::QueryAllValidPaths),
        proptest::option::of(unkeyed_info()).prop_map(Reply::QueryPathInfo),
        vec(store_path(), 0..3).prop_map(Reply::ImportPaths),
        vec(text(), 0..3).prop_map(Reply::QueryDerivationOutputNames),
        proptest::option::of(store_path()).prop_map(Reply::QueryPathFromHashPart),
        btree_map(store_path(), substitutable(), 0..3).prop_map(Reply::QuerySubstitutablePathInfos),
        paths().prop_map(Reply::QueryValidPaths),
        paths().prop_map(Reply::QuerySubstitutablePaths),
        paths().prop_map(Reply::QueryValidDerivers),
        Just(Reply::OptimiseStore),
        any::<bool>().prop_map(Reply::VerifyStore),
        build_result_json().prop_map(Reply::BuildDerivation),
        Just(Reply::AddSignatures),
        Just(Reply::AddToStoreNar),
    ];
    let c = prop_oneof![
        (paths(), paths(), paths(), any::<u64>(), any::<u64>()).prop_map(|(a, b, c, d, n)| {
            Reply::QueryMissing(MissingInfo {
                will_build: a,
                will_substitute: b,
                unknown: c,
                download_size: d,
                nar_size: n,
            })
        }),
        btree_map(name(), proptest::option::of(store_path()), 0..3)
            .prop_map(Reply::QueryDerivationOutputMap),
        Just(Reply::RegisterDrvOutput),
        proptest::option::of(realisation())
            .prop_map(|r| Reply::QueryRealisation(RealisationReply::Json(r))),
        Just(Reply::AddMultipleToStore),
        Just(Reply::AddBuildLog),
        vec((derived_path(), build_result_json()), 0..3).prop_map(|v| {
            Reply::BuildPathsWithResults(
                v.into_iter()
                    .map(|(path, result)| KeyedBuildResult { path, result })
                    .collect(),
            )
        }),
        fs_path().prop_map(Reply::AddPermRoot),
        Just(Reply::SubmitOutput),
        path_info().prop_map(Reply::AddToStoreScanning),
    ];
    prop_oneof![a, b, c]
}

// ---------------------------------------------------------------------------------------------
// Round trips

async fn decode_request(bytes: &[u8], ctx: &WireContext) -> Result<Request, WireError> {
    let mut r = reader(bytes);
    let op = read_op(&mut r)
        .await?
        .ok_or(WireError::UnexpectedEof { field: "operation" })?;
    let req = Request::read(op, &mut r, ctx).await?;
    assert!(
        r.read_u64_or_eof("end").await.unwrap().is_none(),
        "trailing bytes"
    );
    Ok(req)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn primitives_round_trip(n in any::<u64>(), b in any::<bool>(), bytes in vec(any::<u8>(), 0..40),
                             strings in vec(text(), 0..5), map in btree_map(text(), text(), 0..5)) {
        rt().block_on(async {
            let mut w = WireWriter::new();
            w.put_u64(n);
            w.put_bool(b);
            w.put_bytes(&bytes);
            w.put_strings(&strings);
            w.put_string_map(&map);
            assert_eq!(w.len() % 8, 0);
            let mut r = reader(w.as_bytes());
            prop_assert_eq!(r.read_u64("n").await.unwrap(), n);
            prop_assert_eq!(r.read_bool_strict("b").await.unwrap(), b);
            prop_assert_eq!(r.read_bytes("bytes").await.unwrap(), bytes);
            prop_assert_eq!(r.read_string_list("strings").await.unwrap(), strings);
            prop_assert_eq!(r.read_string_map("map").await.unwrap(), map);
            Ok(())
        })?;
    }

    #[test]
    fn framed_round_trip(payload in vec(any::<u8>(), 0..3000), chunk in 1usize..700) {
        rt().block_on(async {
            let mut w = WireWriter::new();
            put_framed(&mut w, &payload, chunk);
            w.put_u64(7);
            let mut r = reader(w.as_bytes());
            let mut framed = FramedReader::new(&mut r);
            let mut got = Vec::new();
            framed.read_to_end(&mut got).await.unwrap();
            prop_assert_eq!(got, payload);
            prop_assert_eq!(r.read_u64("next").await.unwrap(), 7);
            Ok(())
        })?;
    }

    #[test]
    fn store_paths_and_content_addresses(p in store_path(), o in proptest::option::of(store_path()),
                                         set in paths(), ca in proptest::option::of(content_address()),
                                         method in ca_method()) {
        rt().block_on(async {
            let dir = StoreDir::default();
            let mut w = WireWriter::new();
            w.put_path(&dir, &p);
            w.put_opt_path(&dir, o.as_ref());
            w.put_paths(&dir, &set);
            write_opt_ca(&mut w, ca.as_ref());
            method.write(&mut w);
            let mut r = reader(w.as_bytes());
            prop_assert_eq!(r.read_path("p", &dir).await.unwrap(), p);
            prop_assert_eq!(r.read_opt_path("o", &dir).await.unwrap(), o);
            prop_assert_eq!(r.read_path_set("s", &dir).await.unwrap(), set);
            prop_assert_eq!(read_opt_ca(&mut r, "ca").await.unwrap(), ca);
            prop_assert_eq!(CaMethodWithAlgo::read(&mut r, "m").await.unwrap(), method);
            Ok(())
        })?;
    }

    #[test]
    fn path_info_round_trip(info in path_info()) {
        rt().block_on(async {
            let c = ctx(34, &[]);
            let mut w = WireWriter::new();
            info.wire_write(&mut w, &c);
            prop_assert_eq!(ValidPathInfo::wire_read(&mut reader(w.as_bytes()), &c).await.unwrap(), info);
            Ok(())
        })?;
    }

    #[test]
    fn derived_paths_round_trip(new in derived_path(), old in old_derived_path(), single in single_derived_path()) {
        rt().block_on(async {
            for (value, minor) in [(&new, 30), (&new, 38), (&old, 21), (&old, 29)] {
                let c = ctx(minor, &[]);
                let mut w = WireWriter::new();
                value.write(&mut w, &c).unwrap();
                prop_assert_eq!(&DerivedPath::read(&mut reader(w.as_bytes()), &c).await.unwrap(), value);
            }
            let c = ctx(38, &[]);
            let mut w = WireWriter::new();
            single.write(&mut w, &c);
            prop_assert_eq!(SingleDerivedPath::read(&mut reader(w.as_bytes()), &c).await.unwrap(), single);
            Ok(())
        })?;
    }

    #[test]
    fn realisations_round_trip(r in realisation(), id in drv_output_id(), keyed in keyed_realisation()) {
        rt().block_on(async {
            let c = ctx(38, &[FEATURE_REALISATION_WITH_PATH_NOT_HASH]);
            let mut w = WireWriter::new();
            r.wire_write(&mut w);
            id.wire_write(&mut w);
            keyed.wire_write(&mut w, &c);
            let mut rd = reader(w.as_bytes());
            prop_assert_eq!(Realisation::wire_read(&mut rd).await.unwrap(), r);
            prop_assert_eq!(DrvOutput::wire_read(&mut rd).await.unwrap(), id);
            prop_assert_eq!(PathRealisation::wire_read(&mut rd, &c).await.unwrap(), keyed);
            Ok(())
        })?;
    }

    #[test]
    fn build_results_round_trip(json in build_result_json(), binary in build_result_binary(),
                                path in derived_path()) {
        rt().block_on(async {
            let c = ctx(37, &[]);
            let mut w = WireWriter::new();
            json.write(&mut w, &c);
            prop_assert_eq!(&BuildResult::read(&mut reader(w.as_bytes()), &c).await.unwrap(), &json);
            let keyed = KeyedBuildResult { path, result: json };
            let mut w = WireWriter::new();
            keyed.write(&mut w, &c).unwrap();
            prop_assert_eq!(KeyedBuildResult::read(&mut reader(w.as_bytes()), &c).await.unwrap(), keyed);
            let c = ctx(38, &[FEATURE_REALISATION_WITH_PATH_NOT_HASH]);
            let mut w = WireWriter::new();
            binary.write(&mut w, &c);
            prop_assert_eq!(BuildResult::read(&mut reader(w.as_bytes()), &c).await.unwrap(), binary);
            Ok(())
        })?;
    }

    #[test]
    fn small_types_round_trip(mode in build_mode(), trust in proptest::option::of(prop_oneof![Just(TrustFlag::Trusted), Just(TrustFlag::NotTrusted)]),
                              version in text(), trailer_path in store_path(), refs in paths(),
                              deriver in proptest::option::of(store_path()), paths_freed in btree_set(text(), 0..3),
                              freed in any::<u64>()) {
        rt().block_on(async {
            let c = ctx(35, &[]);
            let info = ClientHandshakeInfo { daemon_nix_version: Some(version), trust };
            let trailer = ExportTrailer { path: trailer_path, references: refs, deriver, legacy_signature: None };
            let gc = GcResult { paths: paths_freed, bytes_freed: freed };
            let mut w = WireWriter::new();
            mode.write(&mut w);
            info.write(&mut w, c.version).unwrap();
            trailer.write(&mut w, &c);
            gc.write(&mut w);
            let mut r = reader(w.as_bytes());
            prop_assert_eq!(BuildMode::read(&mut r).await.unwrap(), mode);
            prop_assert_eq!(ClientHandshakeInfo::read(&mut r, c.version).await.unwrap(), info);
            prop_assert_eq!(ExportTrailer::read(&mut r, &c).await.unwrap(), trailer);
            prop_assert_eq!(GcResult::read(&mut r).await.unwrap(), gc);
            Ok(())
        })?;
    }

    #[test]
    fn stderr_messages_round_trip(msg in stderr_message()) {
        rt().block_on(async {
            let v = ProtocolVersion::v1(34);
            let mut w = WireWriter::new();
            msg.write(&mut w, v);
            let mut r = reader(w.as_bytes());
            prop_assert_eq!(StderrMessage::read(&mut r, v).await.unwrap(), msg);
            Ok(())
        })?;
    }

    #[test]
    fn requests_round_trip(req in request_1_34()) {
        rt().block_on(async {
            let c = ctx(34, &[]);
            let mut w = WireWriter::new();
            req.write(&mut w, &c).unwrap();
            prop_assert_eq!(decode_request(w.as_bytes(), &c).await.unwrap(), req);
            Ok(())
        })?;
    }

    #[test]
    fn feature_requests_round_trip(req in request_with_features()) {
        rt().block_on(async {
            let c = ctx(38, BOTH_FEATURES);
            let mut w = WireWriter::new();
            req.write(&mut w, &c).unwrap();
            prop_assert_eq!(decode_request(w.as_bytes(), &c).await.unwrap(), req);
            Ok(())
        })?;
    }

    #[test]
    fn replies_round_trip(reply in reply_no_features()) {
        rt().block_on(async {
            // 1.37 carries every BuildResult field (1.34 drops the CPU times).
            let c = ctx(37, &[]);
            let mut w = WireWriter::new();
            reply.write(&mut w, &c).unwrap();
            let mut r = reader(w.as_bytes());
            prop_assert_eq!(Reply::read(reply.op(), &mut r, &c).await.unwrap(), reply);
            prop_assert!(r.read_u64_or_eof("end").await.unwrap().is_none());
            Ok(())
        })?;
    }

    /// Every strict prefix of an encoded request fails with an end-of-file error.
    #[test]
    fn truncated_requests_are_eof(req in request_1_34()) {
        rt().block_on(async {
            let c = ctx(34, &[]);
            let mut w = WireWriter::new();
            req.write(&mut w, &c).unwrap();
            let bytes = w.into_bytes();
            for cut in 0..bytes.len() {
                let err = decode_request(&bytes[..cut], &c).await.unwrap_err();
                prop_assert!(err.is_eof(), "cut {} of {:?}: {}", cut, req.op(), err);
            }
            Ok(())
        })?;
    }

    /// Every strict prefix of an encoded reply fails with an end-of-file error.
    #[test]
    fn truncated_replies_are_eof(reply in reply_no_features()) {
        rt().block_on(async {
            let c = ctx(34, &[]);
            let mut w = WireWriter::new();
            reply.write(&mut w, &c).unwrap();
            let bytes = w.into_bytes();
            for cut in 0..bytes.len() {
                let err = Reply::read(reply.op(), &mut reader(&bytes[..cut]), &c).await.unwrap_err();
                prop_assert!(err.is_eof(), "cut {} of {:?}: {}", cut, reply.op(), err);
            }
            Ok(())
        })?;
    }

    /// Arbitrary bytes after any op code, at several versions: decoding ends in a value or a
    /// typed error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(op_index in 0usize..46, minor in prop_oneof![Just(21u8), Just(24), Just(29), Just(34), Just(38)],
                                   features in any::<bool>(), bytes in vec(any::<u8>(), 0..300)) {
        rt().block_on(async {
            let op = Op::ALL[op_index];
            let c = ctx(minor, if features { BOTH_FEATURES } else { &[] });
            let _ = Request::read(op, &mut reader(&bytes), &c).await;
            let _ = Reply::read(op, &mut reader(&bytes), &c).await;
            let _ = StderrMessage::read(&mut reader(&bytes), c.version).await;
            let _ = UnkeyedPathInfo::wire_read(&mut reader(&bytes), &c).await;
            let _ = BasicDerivation::read(&mut reader(&bytes), &c).await;
            let server = ServerHandshake::default();
            let _ = server.accept(&mut reader(&bytes), &mut tokio::io::sink(), &ClientHandshakeInfo::default()).await;
            let mut r = reader(&bytes);
            let _ = FramedReader::new(&mut r).drain().await;
        });
    }

    /// Arbitrary bytes that look like numbers in the right places: counts and lengths drawn
    /// near 2^64 must be refused before anything is allocated.
    #[test]
    fn huge_numbers_never_allocate(op_index in 0usize..46, numbers in vec(prop_oneof![
        Just(u64::MAX), Just(u64::MAX - 7), Just(1u64 << 63), Just(1u64 << 32), Just(u64::from(u32::MAX)), 0u64..4,
    ], 1..12)) {
        rt().block_on(async {
            let op = Op::ALL[op_index];
            let bytes: Vec<u8> = numbers.iter().flat_map(|n| n.to_le_bytes()).collect();
            for c in [ctx(34, &[]), ctx(38, BOTH_FEATURES)] {
                let _ = Request::read(op, &mut reader(&bytes), &c).await;
                let _ = Reply::read(op, &mut reader(&bytes), &c).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Targeted bad input

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

async fn request_err(op: Op, bytes: &[u8], c: &WireContext) -> WireError {
    Request::read(op, &mut reader(bytes), c).await.unwrap_err()
}

#[tokio::test]
async fn lengths_and_counts_near_2_pow_64() {
    let c = ctx(34, &[]);
    for n in [u64::MAX, u64::MAX - 1, 1 << 63, 1 << 40] {
        // A store path argument with a huge length.
        assert!(matches!(
            request_err(Op::IsValidPath, &u64s(&[n]), &c).await,
            WireError::StringTooLong { .. }
        ));
        // A path set with a huge count.
        assert!(matches!(
            request_err(Op::QueryValidPaths, &u64s(&[n]), &c).await,
            WireError::TooManyElements { .. }
        ));
        // BuildDerivation: outputs count.
        let mut w = WireWriter::new();
        w.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-x.drv");
        w.put_u64(n);
        assert!(matches!(
            request_err(Op::BuildDerivation, w.as_bytes(), &c).await,
            WireError::TooManyElements { .. }
        ));
        // AddTextToStore text beyond the text limit.
        let mut w = WireWriter::new();
        w.put_str("name");
        w.put_u64(n);
        assert!(matches!(
            request_err(Op::AddTextToStore, w.as_bytes(), &c).await,
            WireError::StringTooLong { .. }
        ));
        // A stderr message and a framed chunk.
        let bytes = u64s(&[STDERR_NEXT, n]);
        assert!(matches!(
            StderrMessage::read(&mut reader(&bytes), c.version).await,
            Err(WireError::StringTooLong { .. })
        ));
        let bytes = u64s(&[n]);
        let mut r = reader(&bytes);
        assert!(matches!(
            FramedReader::new(&mut r).drain().await,
            Err(WireError::FrameTooLarge { .. })
        ));
        // Reply-side counts.
        assert!(matches!(
            Reply::read(Op::FindRoots, &mut reader(&u64s(&[n])), &c).await,
            Err(WireError::TooManyElements { .. })
        ));
        assert!(matches!(
            Reply::read(Op::BuildPathsWithResults, &mut reader(&u64s(&[n])), &c).await,
            Err(WireError::TooManyElements { .. })
        ));
    }
}

#[tokio::test]
async fn non_zero_padding_in_arguments() {
    let c = ctx(34, &[]);
    let mut w = WireWriter::new();
    w.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo");
    let mut bytes = w.into_bytes();
    let last = bytes.len() - 1;
    bytes[last] = 0x20;
    assert!(matches!(
        request_err(Op::IsValidPath, &bytes, &c).await,
        WireError::NonZeroPadding { .. }
    ));
}

#[tokio::test]
async fn invalid_utf8_where_text_is_expected() {
    let c = ctx(34, &[]);
    // AddToStore name.
    let mut w = WireWriter::new();
    w.put_bytes(b"caf\xe9");
    assert!(matches!(
        request_err(Op::AddToStore, w.as_bytes(), &c).await,
        WireError::InvalidUtf8 { field: "name" }
    ));
    // A store path.
    let mut w = WireWriter::new();
    w.put_bytes(b"/nix/store/\xff");
    assert!(matches!(
        request_err(Op::QueryPathInfo, w.as_bytes(), &c).await,
        WireError::InvalidUtf8 { .. }
    ));
    // Derivation environment value.
    let mut w = WireWriter::new();
    w.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-x.drv");
    w.put_u64(0);
    w.put_u64(0);
    w.put_str("x86_64-linux");
    w.put_str("/bin/sh");
    w.put_u64(0);
    w.put_u64(1);
    w.put_str("key");
    w.put_bytes(b"\xc3\x28");
    assert!(matches!(
        request_err(Op::BuildDerivation, w.as_bytes(), &c).await,
        WireError::InvalidUtf8 {
            field: "environment variable value"
        }
    ));
    // Bytes are fine where bytes are expected: AddTextToStore contents.
    let mut w = WireWriter::new();
    w.put_str("n");
    w.put_bytes(b"\xff\xfe");
    w.put_u64(0);
    assert!(
        Request::read(Op::AddTextToStore, &mut reader(w.as_bytes()), &c)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn bool_two_in_strict_fields() {
    let c = ctx(34, &[]);
    assert!(matches!(
        request_err(Op::VerifyStore, &u64s(&[2, 0]), &c).await,
        WireError::InvalidBool {
            field: "check contents",
            value: 2
        }
    ));
    assert!(matches!(
        request_err(Op::AddMultipleToStore, &u64s(&[0, 2]), &c).await,
        WireError::InvalidBool {
            field: "dont check sigs",
            value: 2
        }
    ));
    let mut w = WireWriter::new();
    w.put_str("name");
    w.put_str("fixed:r:sha256");
    w.put_u64(0);
    w.put_u64(2);
    assert!(matches!(
        request_err(Op::AddToStore, w.as_bytes(), &c).await,
        WireError::InvalidBool {
            field: "repair",
            ..
        }
    ));
    // Lenient fields accept it: QueryValidPaths' substitute flag.
    let req = Request::read(Op::QueryValidPaths, &mut reader(&u64s(&[0, 2])), &c)
        .await
        .unwrap();
    assert_eq!(
        req,
        Request::QueryValidPaths(QueryValidPaths {
            paths: BTreeSet::new(),
            substitute: true
        })
    );
    // Client side: a valid flag of 2.
    assert!(matches!(
        Reply::read(Op::IsValidPath, &mut reader(&u64s(&[2])), &c).await,
        Err(WireError::InvalidBool { .. })
    ));
}

#[tokio::test]
async fn oversized_integers() {
    let c = ctx(34, &[]);
    let mut fields = vec![0u64; 12];
    fields[4] = 1 << 32; // maxBuildJobs
    assert!(matches!(
        request_err(Op::SetOptions, &u64s(&fields), &c).await,
        WireError::IntegerTooLarge {
            field: "maxBuildJobs",
            ty: "unsigned int",
            ..
        }
    ));
    assert!(matches!(
        read_op(&mut reader(&u64s(&[1 << 32]))).await,
        Err(WireError::IntegerTooLarge {
            field: "operation",
            ..
        })
    ));
    assert!(matches!(
        request_err(Op::BuildPaths, &u64s(&[0, 3]), &c).await,
        WireError::InvalidCode {
            field: "build mode",
            value: 3
        }
    ));
    let mut w = WireWriter::new();
    w.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo");
    w.put_str("");
    w.put_str(&"00".repeat(32));
    w.put_u64(0);
    w.put_u64(u64::MAX); // registrationTime above time_t
    assert!(matches!(
        request_err(Op::AddToStoreNar, w.as_bytes(), &c).await,
        WireError::IntegerTooLarge {
            field: "registration time",
            ..
        }
    ));
    let mut w = WireWriter::new();
    w.put_u64(2);
    w.put_u64(0);
    w.put_u64(0);
    w.put_u64(0);
    w.put_u64(1 << 32); // an obsolete field must still fit an unsigned int
    assert!(matches!(
        request_err(Op::CollectGarbage, w.as_bytes(), &c).await,
        WireError::IntegerTooLarge { .. }
    ));
}

#[tokio::test]
async fn malformed_values_are_typed() {
    let c = ctx(34, &[]);
    let one = |s: &str| {
        let mut w = WireWriter::new();
        w.put_str(s);
        w.into_bytes()
    };
    assert!(matches!(
        request_err(Op::IsValidPath, &one("/tmp/x"), &c).await,
        WireError::InvalidStorePath { .. }
    ));
    assert!(matches!(
        request_err(Op::AddBuildLog, &one("/nix/store/x"), &c).await,
        WireError::InvalidStorePath { .. }
    ));
    assert!(matches!(
        request_err(Op::QueryRealisation, &one("nope"), &c).await,
        WireError::InvalidDrvOutput { .. }
    ));
    let mut w = WireWriter::new();
    w.put_str("n");
    w.put_str("fixed:r:crc32");
    assert!(matches!(
        request_err(Op::AddToStore, w.as_bytes(), &c).await,
        WireError::InvalidContentAddress { .. }
    ));
    let mut w = WireWriter::new();
    w.put_u64(1);
    w.put_str("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-x.drv!bad name");
    assert!(matches!(
        request_err(Op::QueryMissing, w.as_bytes(), &c).await,
        WireError::InvalidValue { .. }
    ));
    let mut w = WireWriter::new();
    w.put_str("{not json");
    assert!(matches!(
        request_err(Op::RegisterDrvOutput, w.as_bytes(), &c).await,
        WireError::InvalidJson { .. }
    ));
}

#[tokio::test]
async fn message_budget_caps_a_request() {
    // Many legitimately sized strings still cannot exceed the per-message budget.
    let limits = Limits {
        max_message_bytes: 4096,
        ..Limits::default()
    };
    let c = ctx(34, &[]);
    let mut w = WireWriter::new();
    w.put_u64(100);
    for i in 0..100 {
        w.put_str(&format!("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-p{i}"));
    }
    let mut r = WireReader::with_limits(Cursor::new(w.into_bytes()), limits);
    assert!(matches!(
        Request::read(Op::QuerySubstitutablePaths, &mut r, &c).await,
        Err(WireError::MessageTooLarge { .. })
    ));
}

#[tokio::test]
async fn deep_single_derived_path_is_refused() {
    let c = ctx(38, &[]);
    let bytes = u64s(&[1; 64]);
    assert!(matches!(
        request_err(Op::SubmitOutput, &bytes, &c).await,
        WireError::TooDeep { .. }
    ));
}

#[test]
fn unrepresentable_values_are_refused_on_write() {
    let c = ctx(34, &[]);
    let keyed = Request::QueryRealisation(QueryRealisation::Output(DrvPathOutput {
        drv_path: StorePath::from_base_name("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-x.drv").unwrap(),
        output_name: "out".into(),
    }));
    assert!(matches!(
        keyed.write(&mut WireWriter::new(), &c),
        Err(WireError::Unrepresentable { .. })
    ));
    let mut map = BTreeMap::new();
    map.insert("x".to_string(), None);
    assert!(Reply::QueryDerivationOutputMap(map)
        .write(&mut WireWriter::new(), &c)
        .is_ok());
}
