//! Loading descriptors through the binary: conflicts, missing imports, bad bytes and bad sources
//! are refused with messages that name where they came from; harmless overlaps load.

use std::ffi::OsStr;
use std::path::Path;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::cli::{assert_serves_annotated_route, compile_echo, protogate, Run, TempDir};

/// The text fixtures, relative to the repository root.
const FIXTURES: &str = "tests/fixtures/descriptors";

/// `protogate compile FILE -I INCLUDE... -o OUT` from the repository root.
async fn compile(file: &str, includes: &[&str], out: &Path) {
    let mut args: Vec<&OsStr> = vec![OsStr::new("compile"), OsStr::new(file)];
    for include in includes {
        args.extend([OsStr::new("-I"), OsStr::new(include)]);
    }
    args.extend([OsStr::new("-o"), out.as_os_str()]);
    protogate(args).await.assert_ok();
}

/// `protogate check` with each set given by `--descriptor-set`.
async fn check_sets(sets: &[&Path]) -> Run {
    let mut args: Vec<&OsStr> = vec![OsStr::new("check")];
    for set in sets {
        args.extend([OsStr::new("--descriptor-set"), set.as_os_str()]);
    }
    protogate(args).await
}

fn read_set(path: &Path) -> FileDescriptorSet {
    let bytes = std::fs::read(path).expect("read set");
    FileDescriptorSet::decode(bytes.as_slice()).expect("decode set")
}

fn file<'a>(set: &'a FileDescriptorSet, name: &str) -> Option<&'a FileDescriptorProto> {
    set.file.iter().find(|f| f.name() == name)
}

#[tokio::test]
async fn one_file_name_in_two_different_sets_names_both_sources() {
    let tmp = TempDir::new("file-conflict");
    let (left, right) = (tmp.join("left.binpb"), tmp.join("right.binpb"));
    compile(
        &format!("{FIXTURES}/left/fixture/v1/dup.proto"),
        &[&format!("{FIXTURES}/left")],
        &left,
    )
    .await;
    compile(
        &format!("{FIXTURES}/right/fixture/v1/dup.proto"),
        &[&format!("{FIXTURES}/right")],
        &right,
    )
    .await;
    let run = check_sets(&[&left, &right]).await;
    let stderr = run.assert_failed();
    for needle in [
        "\"fixture/v1/dup.proto\"",
        &left.display().to_string(),
        &right.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn one_symbol_in_two_files_names_both_sources() {
    let tmp = TempDir::new("symbol-conflict");
    let (left, right) = (tmp.join("left.binpb"), tmp.join("other.binpb"));
    compile(
        &format!("{FIXTURES}/left/fixture/v1/dup.proto"),
        &[&format!("{FIXTURES}/left")],
        &left,
    )
    .await;
    compile(
        &format!("{FIXTURES}/right/fixture/v1/other.proto"),
        &[&format!("{FIXTURES}/right")],
        &right,
    )
    .await;
    let run = check_sets(&[&left, &right]).await;
    let stderr = run.assert_failed();
    for needle in [
        "\"fixture.v1.Left\"",
        "fixture/v1/dup.proto",
        "fixture/v1/other.proto",
        &left.display().to_string(),
        &right.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn the_same_file_from_several_inputs_loads_once() {
    let tmp = TempDir::new("same-file");
    let (set, copy) = (tmp.join("echo.binpb"), tmp.join("copy.pb"));
    compile_echo(&set).await;
    std::fs::copy(&set, &copy).expect("copy set");
    let once = check_sets(&[&set]).await;
    once.assert_ok();
    // The set, a copy under another name, the folder holding both, and the .proto itself.
    let run = protogate([
        OsStr::new("check"),
        OsStr::new("--descriptor-set"),
        set.as_os_str(),
        OsStr::new("--descriptor-set"),
        copy.as_os_str(),
        OsStr::new("--descriptor-dir"),
        tmp.path().as_os_str(),
        OsStr::new("--proto"),
        OsStr::new("protos/test/v1/echo.proto"),
        OsStr::new("--proto-path"),
        OsStr::new("protos"),
    ])
    .await;
    run.assert_ok();
    assert_eq!(
        run.stdout, once.stdout,
        "same routes and warnings as one load"
    );
}

#[tokio::test]
async fn a_set_missing_an_import_names_the_file_and_the_import() {
    let tmp = TempDir::new("missing-import");
    let full = tmp.join("full.binpb");
    compile(
        &format!("{FIXTURES}/imports/fixture/v1/uses_base.proto"),
        &[&format!("{FIXTURES}/imports")],
        &full,
    )
    .await;
    let mut set = read_set(&full);
    assert!(
        file(&set, "fixture/v1/base.proto").is_some(),
        "compile includes imports"
    );
    set.file.retain(|f| f.name() != "fixture/v1/base.proto");
    let cut = tmp.join("cut.binpb");
    std::fs::write(&cut, set.encode_to_vec()).expect("write cut set");
    check_sets(&[&full]).await.assert_ok();

    let run = check_sets(&[&cut]).await;
    let stderr = run.assert_failed();
    for needle in [
        "\"fixture/v1/uses_base.proto\"",
        "\"fixture/v1/base.proto\"",
        &cut.display().to_string(),
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn a_proto_missing_an_import_names_the_file_and_the_import() {
    let run = protogate([
        "check",
        "--proto",
        &format!("{FIXTURES}/broken/fixture/v1/missing_import.proto"),
        "--proto-path",
        &format!("{FIXTURES}/broken"),
    ])
    .await;
    let stderr = run.assert_failed();
    for needle in ["missing_import.proto", "fixture/v1/nowhere.proto"] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn garbage_bytes_name_their_file() {
    let tmp = TempDir::new("garbage");
    let junk = tmp.join("junk.binpb");
    std::fs::write(&junk, b"\xff\xff\xff\xffnot a descriptor set").expect("write junk");
    let run = check_sets(&[&junk]).await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains(&junk.display().to_string())
            && stderr.contains("not a valid FileDescriptorSet"),
        "{stderr}"
    );

    // Found by a folder scan, the file is still named, not just the folder.
    let run = protogate([
        OsStr::new("check"),
        OsStr::new("--descriptor-dir"),
        tmp.path().as_os_str(),
    ])
    .await;
    let stderr = run.assert_failed();
    assert!(stderr.contains(&junk.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn a_syntax_error_names_its_file() {
    let broken = format!("{FIXTURES}/broken/fixture/v1/syntax_error.proto");
    let include = format!("{FIXTURES}/broken");
    let run = protogate(["check", "--proto", &broken, "--proto-path", &include]).await;
    let stderr = run.assert_failed();
    assert!(stderr.contains("syntax_error.proto"), "{stderr}");

    let tmp = TempDir::new("syntax");
    let out = tmp.join("never.binpb");
    let run = protogate([
        OsStr::new("compile"),
        OsStr::new(&broken),
        OsStr::new("-I"),
        OsStr::new(&include),
        OsStr::new("-o"),
        out.as_os_str(),
    ])
    .await;
    let stderr = run.assert_failed();
    assert!(stderr.contains("syntax_error.proto"), "{stderr}");
    assert!(!out.exists(), "nothing is written on failure");
}

#[tokio::test]
async fn a_syntax_error_in_an_import_names_the_import() {
    let run = protogate([
        "check",
        "--proto",
        &format!("{FIXTURES}/broken/fixture/v1/importer.proto"),
        "--proto-path",
        &format!("{FIXTURES}/broken"),
    ])
    .await;
    let stderr = run.assert_failed();
    for needle in ["fixture/v1/syntax_error.proto", "importer.proto"] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn a_set_carrying_the_bundled_google_api_files_loads() {
    let tmp = TempDir::new("own-google-api");
    let set = tmp.join("echo.binpb");
    compile_echo(&set).await;
    let decoded = read_set(&set);
    let bundled = protogate::descriptors::bundled_set();
    for name in ["google/api/http.proto", "google/api/annotations.proto"] {
        let ours = file(&decoded, name).unwrap_or_else(|| panic!("the set carries {name}"));
        assert_eq!(Some(ours), file(&bundled, name), "{name} as bundled");
    }
    assert_serves_annotated_route(&[OsStr::new("--descriptor-set"), set.as_os_str()]).await;
}

#[tokio::test]
async fn a_set_carrying_other_google_api_copies_loads() {
    let tmp = TempDir::new("vendored-google-api");
    let set = tmp.join("echo.binpb");
    // The vendored folder comes first, so its google/api files are the ones compiled in.
    compile(
        "protos/test/v1/echo.proto",
        &[&format!("{FIXTURES}/vendored"), "protos"],
        &set,
    )
    .await;
    let decoded = read_set(&set);
    let bundled = protogate::descriptors::bundled_set();
    for name in ["google/api/http.proto", "google/api/annotations.proto"] {
        let theirs = file(&decoded, name).unwrap_or_else(|| panic!("the set carries {name}"));
        assert_ne!(
            Some(theirs),
            file(&bundled, name),
            "{name} differs from ours"
        );
    }
    assert_serves_annotated_route(&[OsStr::new("--descriptor-set"), set.as_os_str()]).await;
}
