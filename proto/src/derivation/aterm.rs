//! The ATerm text of `.drv` files:
//!
//! ```text
//! Derive([outputs],[inputDrvs],[inputSrcs],"platform","builder",[args],[env])
//! ```
//!
//! The printer writes exactly what Nix writes: no whitespace, outputs and env sorted by name,
//! input derivations and sources sorted by path; builder, args and env escaped (`\"` `\\` `\n`
//! `\r` `\t`), every other field written raw.
//!
//! The parser is a flat, iterative reader over a slice (the grammar has no nesting beyond
//! fixed-depth lists, so nothing recurses). Compared with Nix it is stricter where Nix never
//! writes the text it would tolerate: list separators must be exact, duplicate keys and
//! elements are refused instead of silently merged, data after the closing `)` is refused, and
//! an input derivation must ask for at least one output. Like Nix it accepts entries in any
//! order (the printer sorts them), any escaped character (`\x` reads as `x`), and digests in any
//! encoding. `DrvWithVersion` is refused: its only version, `xp-dyn-drv`, is the dynamic
//! derivations experiment.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::store_path::{StoreDir, StorePath};

use super::output::{output_triple, parse_triple, StatedFixedPath};
use super::{check_drv_name, check_output_name, Derivation, DerivationError};

/// The longest `.drv` text accepted (large real ones are a few hundred KiB).
pub const MAX_ATERM_SIZE: usize = 64 << 20;

type Result<T> = std::result::Result<T, DerivationError>;

/// A cursor over the text.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn syntax(&self, expected: &'static str) -> DerivationError {
        DerivationError::Syntax {
            offset: self.pos,
            expected,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        if self.input[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, literal: &[u8], expected: &'static str) -> Result<()> {
        if self.eat(literal) {
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    /// A string literal; returns its start offset and its unescaped bytes.
    fn string(&mut self) -> Result<(usize, Cow<'a, [u8]>)> {
        let start = self.pos;
        self.expect(b"\"", "'\"'")?;
        let body_start = self.pos;
        let input: &'a [u8] = self.input;
        let mut owned: Option<Vec<u8>> = None;
        let mut i = body_start;
        loop {
            match input.get(i) {
                None => return Err(DerivationError::UnterminatedString { offset: start }),
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok((
                        start,
                        match owned {
                            Some(v) => Cow::Owned(v),
                            None => Cow::Borrowed(&input[body_start..i]),
                        },
                    ));
                }
                Some(b'\\') => {
                    let Some(&escaped) = input.get(i + 1) else {
                        return Err(DerivationError::UnterminatedString { offset: start });
                    };
                    let buf = owned.get_or_insert_with(|| input[body_start..i].to_vec());
                    buf.push(match escaped {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        other => other,
                    });
                    i += 2;
                }
                Some(&c) => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(c);
                    }
                    i += 1;
                }
            }
        }
    }

    /// A string literal that must be UTF-8.
    fn text(&mut self, field: &'static str) -> Result<(usize, String)> {
        let (offset, bytes) = self.string()?;
        let text = String::from_utf8(bytes.into_owned())
            .map_err(|_| DerivationError::NotUtf8 { field }.at(offset))?;
        Ok((offset, text))
    }

    /// A string literal holding a full store path.
    fn store_path(&mut self, store_dir: &StoreDir) -> Result<(usize, StorePath)> {
        let (offset, text) = self.text("store path")?;
        let path = store_dir
            .parse_path(&text)
            .map_err(|source| DerivationError::BadPath { path: text, source }.at(offset))?;
        Ok((offset, path))
    }

    /// `[item,item,…]` (possibly empty), calling `item` for each element.
    fn list(&mut self, mut item: impl FnMut(&mut Parser<'a>) -> Result<()>) -> Result<()> {
        self.expect(b"[", "'['")?;
        if self.eat(b"]") {
            return Ok(());
        }
        loop {
            item(self)?;
            if self.eat(b",") {
                continue;
            }
            if self.eat(b"]") {
                return Ok(());
            }
            return Err(self.syntax("',' or ']'"));
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses `.drv` text; `name` is the derivation name (the `.drv` path's name minus `.drv`).
pub(crate) fn parse(input: &[u8], store_dir: &StoreDir, name: &str) -> Result<Derivation> {
    if input.len() > MAX_ATERM_SIZE {
        return Err(DerivationError::TooLarge {
            size: input.len(),
            limit: MAX_ATERM_SIZE,
        });
    }
    check_drv_name(name)?;
    let mut p = Parser { input, pos: 0 };
    if p.eat(b"DrvWithVersion(") {
        let (_, version) = p.string()?;
        return Err(if version.as_ref() == b"xp-dyn-drv" {
            DerivationError::DynamicDerivationsUnsupported
        } else {
            DerivationError::UnknownVersion {
                version: lossy(&version),
            }
        });
    }
    p.expect(b"Derive(", "'Derive(' or 'DrvWithVersion('")?;

    let mut outputs = BTreeMap::new();
    p.list(|p| {
        p.expect(b"(", "'('")?;
        let (offset, output_name) = p.text("output name")?;
        p.expect(b",", "','")?;
        let (_, path) = p.text("output path")?;
        p.expect(b",", "','")?;
        let (_, hash_algo) = p.text("output hash algorithm")?;
        p.expect(b",", "','")?;
        let (_, hash) = p.text("output hash")?;
        p.expect(b")", "')'")?;
        check_output_name(&output_name).map_err(|e| e.at(offset))?;
        let output = parse_triple(
            &path,
            &hash_algo,
            &hash,
            store_dir,
            name,
            &output_name,
            StatedFixedPath::MustMatch,
        )
        .map_err(|e| e.at(offset))?;
        if outputs.contains_key(&output_name) {
            return Err(duplicate("output", output_name).at(offset));
        }
        outputs.insert(output_name, output);
        Ok(())
    })?;

    p.expect(b",", "','")?;
    let mut input_drvs = BTreeMap::new();
    p.list(|p| {
        p.expect(b"(", "'('")?;
        let (offset, drv_path) = p.store_path(store_dir)?;
        p.expect(b",", "','")?;
        if p.peek() == Some(b'(') {
            return Err(p.syntax("'[' (dynamic derivation inputs are not supported)"));
        }
        let mut wanted = BTreeSet::new();
        p.list(|p| {
            let (offset, output_name) = p.text("input output name")?;
            check_output_name(&output_name).map_err(|e| e.at(offset))?;
            if !wanted.insert(output_name.clone()) {
                return Err(duplicate("input output", output_name).at(offset));
            }
            Ok(())
        })?;
        p.expect(b")", "')'")?;
        if wanted.is_empty() {
            return Err(DerivationError::NoInputOutputs {
                path: store_dir.print(&drv_path),
            }
            .at(offset));
        }
        if input_drvs.contains_key(&drv_path) {
            return Err(duplicate("input derivation", store_dir.print(&drv_path)).at(offset));
        }
        input_drvs.insert(drv_path, wanted);
        Ok(())
    })?;

    p.expect(b",", "','")?;
    let mut input_srcs = BTreeSet::new();
    p.list(|p| {
        let (offset, path) = p.store_path(store_dir)?;
        if input_srcs.contains(&path) {
            return Err(duplicate("input source", store_dir.print(&path)).at(offset));
        }
        input_srcs.insert(path);
        Ok(())
    })?;

    p.expect(b",", "','")?;
    let (offset, platform) = p.text("platform")?;
    check_platform(&platform).map_err(|e| e.at(offset))?;
    p.expect(b",", "','")?;
    let builder = p.string()?.1.into_owned();

    p.expect(b",", "','")?;
    let mut args = Vec::new();
    p.list(|p| {
        args.push(p.string()?.1.into_owned());
        Ok(())
    })?;

    p.expect(b",", "','")?;
    let mut env = BTreeMap::new();
    p.list(|p| {
        p.expect(b"(", "'('")?;
        let (offset, key) = p.string()?;
        p.expect(b",", "','")?;
        let value = p.string()?.1.into_owned();
        p.expect(b")", "')'")?;
        let key = key.into_owned();
        if env.contains_key(&key) {
            return Err(duplicate("environment variable", lossy(&key)).at(offset));
        }
        env.insert(key, value);
        Ok(())
    })?;

    p.expect(b")", "')'")?;
    if p.pos != input.len() {
        return Err(DerivationError::TrailingData { offset: p.pos });
    }
    Ok(Derivation {
        name: name.to_owned(),
        outputs,
        input_drvs,
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}

fn duplicate(what: &'static str, key: String) -> DerivationError {
    DerivationError::Duplicate { what, key }
}

/// Refuses a platform the printer cannot write: it is written raw, so a `"` would end the
/// string early and a `\` would be read back as an escape.
fn check_platform(platform: &str) -> Result<()> {
    if platform.contains(['"', '\\']) {
        let shown: String = platform.escape_debug().take(128).collect();
        return Err(DerivationError::UnprintablePlatform { platform: shown });
    }
    Ok(())
}

/// Writes `"s"` without escaping (fields Nix never escapes).
fn push_raw(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

/// Writes `"s"` with `"` `\` newline CR tab escaped.
fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

fn push_list<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

/// How the hash-modulo computation wants the text changed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Modulo<'a> {
    /// Input derivations replaced by the base16 of their hashes, with merged output sets.
    pub inputs: &'a BTreeMap<String, BTreeSet<String>>,
    /// Output paths written as `""` and env vars named after outputs set to `""`.
    pub mask_outputs: bool,
}

/// The ATerm text of `drv`.
pub(crate) fn print(drv: &Derivation, store_dir: &StoreDir) -> Result<Vec<u8>> {
    print_with(drv, store_dir, None)
}

/// The ATerm text, or with `modulo` the text hashDerivationModulo hashes.
pub(crate) fn print_with(
    drv: &Derivation,
    store_dir: &StoreDir,
    modulo: Option<Modulo<'_>>,
) -> Result<Vec<u8>> {
    let mask = modulo.is_some_and(|m| m.mask_outputs);
    let mut out = Vec::with_capacity(estimated_len(drv));
    out.extend_from_slice(b"Derive(");

    let mut triples = Vec::with_capacity(drv.outputs.len());
    for (name, output) in &drv.outputs {
        let (path, algo, hash) = output_triple(output, store_dir, &drv.name, name)?;
        let path = if mask { String::new() } else { path };
        triples.push((name, path, algo, hash));
    }
    push_list(&mut out, &triples, |out, (name, path, algo, hash)| {
        out.push(b'(');
        push_raw(out, name.as_bytes());
        for field in [path, algo, hash] {
            out.push(b',');
            push_raw(out, field.as_bytes());
        }
        out.push(b')');
    });

    out.push(b',');
    let push_input = |out: &mut Vec<u8>, (key, outputs): (&[u8], &BTreeSet<String>)| {
        out.push(b'(');
        push_raw(out, key);
        out.push(b',');
        push_list(out, outputs, |out, o| push_raw(out, o.as_bytes()));
        out.push(b')');
    };
    match modulo {
        Some(m) => push_list(
            &mut out,
            m.inputs.iter().map(|(k, v)| (k.as_bytes(), v)),
            push_input,
        ),
        None => {
            let printed: Vec<(String, &BTreeSet<String>)> = drv
                .input_drvs
                .iter()
                .map(|(p, v)| (store_dir.print(p), v))
                .collect();
            push_list(
                &mut out,
                printed.iter().map(|(k, v)| (k.as_bytes(), *v)),
                push_input,
            );
        }
    }

    out.push(b',');
    push_list(&mut out, &drv.input_srcs, |out, p| {
        push_raw(out, store_dir.print(p).as_bytes())
    });
    out.push(b',');
    check_platform(&drv.platform)?;
    push_raw(&mut out, drv.platform.as_bytes());
    out.push(b',');
    push_escaped(&mut out, &drv.builder);
    out.push(b',');
    push_list(&mut out, &drv.args, |out, a| push_escaped(out, a));
    out.push(b',');
    push_list(&mut out, &drv.env, |out, (key, value)| {
        let masked = mask && std::str::from_utf8(key).is_ok_and(|k| drv.outputs.contains_key(k));
        out.push(b'(');
        push_escaped(out, key);
        out.push(b',');
        push_escaped(out, if masked { b"" } else { value });
        out.push(b')');
    });
    out.push(b')');
    Ok(out)
}

/// A guess at the printed size, to allocate once.
fn estimated_len(drv: &Derivation) -> usize {
    let paths = (drv.outputs.len() + drv.input_drvs.len() + drv.input_srcs.len()) * 96;
    let args: usize = drv.args.iter().map(|a| a.len() + 3).sum();
    let env: usize = drv.env.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    64 + paths + drv.platform.len() + drv.builder.len() + args + env
}

#[cfg(test)]
mod tests {
    use super::*;

    const TV5: &str = r#"Derive([("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","hello"),("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello"),("system","x86_64-linux")])"#;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    fn parse_err(text: &[u8]) -> DerivationError {
        parse(text, &store(), "hello").unwrap_err()
    }

    #[test]
    fn round_trips_tv5() {
        let drv = parse(TV5.as_bytes(), &store(), "hello").unwrap();
        assert_eq!(drv.platform, "x86_64-linux");
        assert_eq!(drv.args, vec![b"-c".to_vec(), b"echo hi > $out".to_vec()]);
        assert_eq!(print(&drv, &store()).unwrap(), TV5.as_bytes());
    }

    #[test]
    fn escapes_round_trip() {
        let mut drv = parse(TV5.as_bytes(), &store(), "hello").unwrap();
        drv.builder = b"a\"b\\c\nd\re\tf\x01\xff".to_vec();
        drv.args = vec![Vec::new(), b"\\\\".to_vec()];
        drv.env
            .insert(b"k\"ey\n".to_vec(), b"\xc3\x28 \\n".to_vec());
        let text = print(&drv, &store()).unwrap();
        let s = String::from_utf8_lossy(&text);
        assert!(s.contains(r#""a\"b\\c\nd\re\tf"#), "{s}");
        assert!(s.contains(r#"["","\\\\"]"#), "{s}");
        assert_eq!(parse(&text, &store(), "hello").unwrap(), drv);
    }

    #[test]
    fn other_escapes_read_as_the_character() {
        let text = TV5.replace(r#""/bin/sh",["#, r#""/bin/\s\h\"",["#);
        let drv = parse(text.as_bytes(), &store(), "hello").unwrap();
        assert_eq!(drv.builder, b"/bin/sh\"");
    }

    #[test]
    fn accepts_unsorted_entries_and_prints_sorted() {
        let text = TV5.replace(
            r#"[("builder","/bin/sh"),("name","hello")"#,
            r#"[("name","hello"),("builder","/bin/sh")"#,
        );
        let drv = parse(text.as_bytes(), &store(), "hello").unwrap();
        assert_eq!(print(&drv, &store()).unwrap(), TV5.as_bytes());
    }

    #[test]
    fn refuses_versions() {
        assert_eq!(
            parse_err(br#"DrvWithVersion("xp-dyn-drv",[],[],[],"a","b",[],[])"#),
            DerivationError::DynamicDerivationsUnsupported
        );
        assert_eq!(
            parse_err(br#"DrvWithVersion("v2",[],[],[],"a","b",[],[])"#),
            DerivationError::UnknownVersion {
                version: "v2".into()
            }
        );
        assert!(matches!(
            parse_err(br#"Derivation([],[],[],"a","b",[],[])"#),
            DerivationError::Syntax { offset: 0, .. }
        ));
        assert!(matches!(
            parse_err(br#"DrvWithVersion("xp-dyn-drv"#),
            DerivationError::UnterminatedString { offset: 15 }
        ));
    }

    #[test]
    fn refuses_every_truncation() {
        for len in 0..TV5.len() {
            let err = parse(&TV5.as_bytes()[..len], &store(), "hello").unwrap_err();
            let offset = err.offset().expect("syntax errors carry an offset");
            assert!(offset <= len, "offset {offset} beyond prefix {len}: {err}");
        }
    }

    #[test]
    fn refuses_trailing_data() {
        for extra in ["\n", " ", ")", "Derive("] {
            let text = format!("{TV5}{extra}");
            assert_eq!(
                parse_err(text.as_bytes()),
                DerivationError::TrailingData { offset: TV5.len() }
            );
        }
    }

    #[test]
    fn refuses_unterminated_strings() {
        for text in [
            r#"Derive([("out"#,
            r#"Derive([("out\"#,
            r#"Derive([("out\""#,
            r#"Derive([],[],[],"x86_64-linux","/bin/sh\"#,
        ] {
            assert!(
                matches!(
                    parse_err(text.as_bytes()),
                    DerivationError::UnterminatedString { .. }
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_sloppy_lists() {
        for (from, to) in [
            (r#"["-c","echo"#, r#"[,"-c","echo"#),
            (r#"["-c","echo"#, r#"["-c""echo"#),
            (r#""echo hi > $out"]"#, r#""echo hi > $out",]"#),
            (r#""x86_64-linux","#, r#""x86_64-linux" ,"#),
            ("Derive([(", "Derive( [("),
        ] {
            let text = TV5.replacen(from, to, 1);
            assert_ne!(text, TV5);
            assert!(
                matches!(parse_err(text.as_bytes()), DerivationError::Syntax { .. }),
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_bad_paths() {
        let good = "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello";
        for bad in [
            "nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello",
            "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello/",
            "/nix/store//mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello",
            "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hel lo",
            "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ie-hello",
            "/gnu/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello",
            "/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-",
        ] {
            let text = TV5.replacen(good, bad, 1);
            let err = parse_err(text.as_bytes());
            assert!(
                matches!(err.innermost(), DerivationError::BadPath { .. }),
                "{bad}: {err}"
            );
            // Output errors point at the start of the output entry's name.
            assert_eq!(err.offset(), Some(9), "{bad}");
        }
        // Input sources and input derivations too.
        let text = TV5.replace("],[],[],", r#"],[],["relative"],"#);
        assert!(matches!(
            parse_err(text.as_bytes()).innermost(),
            DerivationError::BadPath { .. }
        ));
        let text = TV5.replace("],[],[],", r#"],[("x.drv",["out"])],[],"#);
        assert!(matches!(
            parse_err(text.as_bytes()).innermost(),
            DerivationError::BadPath { .. }
        ));
    }

    #[test]
    fn refuses_bad_names() {
        assert!(matches!(
            parse(TV5.as_bytes(), &store(), "hel lo"),
            Err(DerivationError::BadName { .. })
        ));
        assert!(matches!(
            parse(TV5.as_bytes(), &store(), ""),
            Err(DerivationError::BadName { .. })
        ));
        let text = TV5.replacen(r#"[("out","#, r#"[("o/ut","#, 1);
        assert!(matches!(
            parse_err(text.as_bytes()).innermost(),
            DerivationError::BadOutputName { .. }
        ));
        let text = TV5.replace(
            "],[],[],",
            r#"],[("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",["o ut"])],[],"#,
        );
        assert!(matches!(
            parse_err(text.as_bytes()).innermost(),
            DerivationError::BadOutputName { .. }
        ));
    }

    #[test]
    fn refuses_duplicates() {
        let dep = r#"("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",["out"])"#;
        let src = r#""/nix/store/6h9lcbx523532ax1c5g2351w9bm8ykhy-f.txt""#;
        let out = r#"("out","/nix/store/mjs27ix6ig2bkbi3s3sm470vrv4lf7ic-hello","","")"#;
        for (text, what) in [
            (TV5.replacen(out, &format!("{out},{out}"), 1), "output"),
            (
                TV5.replace("],[],[],", &format!("],[{dep},{dep}],[],")),
                "input derivation",
            ),
            (
                TV5.replace(
                    "],[],[],",
                    r#"],[("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",["out","out"])],[],"#,
                ),
                "input output",
            ),
            (
                TV5.replace("],[],[],", &format!("],[],[{src},{src}],")),
                "input source",
            ),
            (
                TV5.replace(
                    r#"("name","hello")"#,
                    r#"("name","hello"),("name","bye")"#,
                ),
                "environment variable",
            ),
        ] {
            match parse_err(text.as_bytes()).innermost() {
                DerivationError::Duplicate { what: got, .. } => assert_eq!(*got, what),
                other => panic!("{what}: {other}"),
            }
        }
    }

    #[test]
    fn refuses_empty_and_dynamic_inputs() {
        let text = TV5.replace(
            "],[],[],",
            r#"],[("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",[])],[],"#,
        );
        assert!(matches!(
            parse_err(text.as_bytes()).innermost(),
            DerivationError::NoInputOutputs { .. }
        ));
        let text = TV5.replace(
            "],[],[],",
            r#"],[("/nix/store/76w21n1f03fs5kw8fnffphx7qrqffw6r-hello.drv",(["out"],[]))],[],"#,
        );
        assert!(matches!(
            parse_err(text.as_bytes()),
            DerivationError::Syntax { .. }
        ));
    }

    #[test]
    fn refuses_non_utf8_where_nix_writes_raw() {
        let text = TV5.replacen("x86_64-linux", "x86_64-\u{0}linux", 1);
        assert!(parse(text.as_bytes(), &store(), "hello").is_ok());
        let mut bytes = TV5.as_bytes().to_vec();
        let at = TV5.find("x86_64-linux").unwrap();
        bytes[at] = 0xff;
        assert_eq!(
            parse_err(&bytes).innermost(),
            &DerivationError::NotUtf8 { field: "platform" }
        );
    }

    #[test]
    fn refuses_huge_input_before_reading_it() {
        let huge = vec![b'D'; MAX_ATERM_SIZE + 1];
        assert!(matches!(parse_err(&huge), DerivationError::TooLarge { .. }));
    }

    #[test]
    fn deep_junk_is_a_plain_syntax_error() {
        let junk = "[".repeat(100_000);
        let text = format!("Derive({junk}");
        assert!(matches!(
            parse_err(text.as_bytes()),
            DerivationError::Syntax { .. }
        ));
        let nested = format!("Derive([(\"out\",{}", "(".repeat(100_000));
        assert!(matches!(
            parse_err(nested.as_bytes()),
            DerivationError::Syntax { .. }
        ));
    }

    #[test]
    fn many_entries_parse_without_recursion() {
        let args: Vec<String> = (0..50_000).map(|i| format!("\"a{i}\"")).collect();
        let text = TV5.replace(
            r#"["-c","echo hi > $out"]"#,
            &format!("[{}]", args.join(",")),
        );
        let drv = parse(text.as_bytes(), &store(), "hello").unwrap();
        assert_eq!(drv.args.len(), 50_000);
        assert_eq!(print(&drv, &store()).unwrap(), text.as_bytes());
    }
}
