use super::*;

fn options(lang: Lang, dir: &str) -> Options {
    Options {
        lang,
        dir: PathBuf::from(dir),
        name: None,
        kind: None,
        group: "demo.example.com".into(),
        version: "v1".into(),
        children: vec![],
    }
}

fn files_of(opts: &Options) -> BTreeMap<PathBuf, String> {
    Project::checked(opts).unwrap().files()
}

/// Files of the kit directory `dir` (relative to the repository) with extension `ext`.
fn kit_files(dir: &str, ext: &str, skip: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext) && !n.ends_with(skip))
        .collect();
    names.sort();
    names
}

use std::path::Path;

#[test]
fn every_source_file_of_each_kit_is_vendored() {
    let embedded = |kit: &[(&str, &str)], prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = kit
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(prefix))
            .filter(|p| !p.contains('/'))
            .map(String::from)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        embedded(RUST_KIT, "vendor/wasmop-pdk/src/"),
        kit_files("plugins/pdk-rust/src", ".rs", "\0"),
        "a PDK source file is not in init::RUST_KIT"
    );
    assert_eq!(
        embedded(RUST_KIT, "vendor/wasmop-abi/src/"),
        kit_files("plugins/abi/src", ".rs", "\0")
    );
    assert_eq!(
        embedded(GO_KIT, "third_party/wasmop-go/wasmop/"),
        kit_files("plugins/go/wasmop", ".go", "_test.go"),
        "a Go kit file is not in init::GO_KIT"
    );
}

#[test]
fn sections_keep_or_drop_whole_lines_and_inline_text() {
    let vars = BTreeMap::from([("x", "1".to_string())]);
    let t = "a {{x}}\n{{#on}}\nkept\n{{/on}}\n{{^on}}\ndropped\n{{/on}}\nb {{#on}}in{{/on}}{{^on}}out{{/on}}\n";
    assert_eq!(render(t, &vars, &[("on", true)]), "a 1\nkept\nb in\n");
    assert_eq!(render(t, &vars, &[("on", false)]), "a 1\ndropped\nb out\n");
}

#[test]
fn unusable_options_name_the_flag_and_the_fix() {
    let cases: Vec<(Options, &str)> = vec![
        (options(Lang::Go, "/tmp/My_Plugin"), "DIR \"My_Plugin\""),
        (
            Options {
                kind: Some("greeting".into()),
                ..options(Lang::Go, "/tmp/g")
            },
            "--kind \"greeting\": a kind is UpperCamelCase",
        ),
        (
            Options {
                group: "example".into(),
                ..options(Lang::Go, "/tmp/g")
            },
            "--group \"example\": a CRD's group is a DNS name with at least one dot",
        ),
        (
            Options {
                version: "1".into(),
                ..options(Lang::Go, "/tmp/g")
            },
            "--version \"1\"",
        ),
        (
            Options {
                children: vec!["ConfigMap".into()],
                ..options(Lang::Go, "/tmp/g")
            },
            "--child \"ConfigMap\": use APIVERSION/KIND",
        ),
        (
            Options {
                children: vec!["apps/Deployment".into()],
                ..options(Lang::Go, "/tmp/g")
            },
            "--child \"apps/Deployment\": the part before the kind is an apiVersion",
        ),
    ];
    for (opts, want) in cases {
        let err = Project::checked(&opts).err().expect("refused").to_string();
        assert!(err.starts_with(want), "{err}");
    }
    assert!(
        Lang::parse("python")
            .unwrap_err()
            .to_string()
            .contains("use rust, go or ts")
    );
}

#[test]
fn a_project_declares_its_kinds_consistently_and_points_nowhere_outside_itself() {
    for lang in [Lang::Rust, Lang::Go, Lang::Ts] {
        let opts = Options {
            children: vec!["v1/ConfigMap".into(), "apps/v1/Deployment".into()],
            ..options(lang, "/somewhere/greeter")
        };
        let files = files_of(&opts);
        let wc: WasmController =
            serde_yaml::from_str(&files[Path::new("deploy/wasmcontroller.yaml")]).unwrap();
        assert_eq!(wc.spec.parent.api_version, "demo.example.com/v1");
        assert_eq!(wc.spec.parent.kind, "Greeter");
        assert_eq!(wc.spec.children.len(), 2);
        assert_eq!(wc.spec.service_account_name, "greeter-controller");
        let crd: serde_json::Value =
            serde_yaml::from_str(&files[Path::new("deploy/crd.yaml")]).unwrap();
        assert_eq!(crd["metadata"]["name"], "greeters.demo.example.com");
        assert_eq!(
            files[Path::new("deploy/rbac.yaml")],
            crate::cluster::rbac::role_yaml(&wc, None)
        );
        for fixture in ["new-parent", "steady", "bad-message"] {
            let case: serde_json::Value =
                serde_yaml::from_str(&files[Path::new(&format!("fixtures/{fixture}.yaml"))])
                    .unwrap();
            assert_eq!(case["childKinds"].as_array().unwrap().len(), 2, "{fixture}");
            assert_eq!(case["object"]["kind"], "Greeter");
        }
        for (path, text) in &files {
            assert!(
                !text.contains("{{"),
                "{}: an unfilled variable",
                path.display()
            );
            assert!(
                !text.contains("../../"),
                "{}: a path out of the project",
                path.display()
            );
        }
    }
}

#[test]
fn the_go_project_replaces_the_kit_with_its_own_copy_and_pins_the_pdk() {
    let files = files_of(&options(Lang::Go, "/x/greeter"));
    let go_mod = &files[Path::new("go.mod")];
    assert!(go_mod.contains("replace wasmop.dev/plugins/go => ./third_party/wasmop-go"));
    assert!(
        go_mod.contains("require github.com/extism/go-pdk v"),
        "{go_mod}"
    );
    assert!(files[Path::new("go.sum")].contains("github.com/extism/go-pdk"));
}

#[test]
fn the_typescript_project_pins_the_examples_tools() {
    let files = files_of(&options(Lang::Ts, "/x/greeter"));
    let package: serde_json::Value =
        serde_json::from_str(&files[Path::new("package.json")]).unwrap();
    let example: serde_json::Value = serde_json::from_str(TS_EXAMPLE_PACKAGE).unwrap();
    assert_eq!(package["devDependencies"], example["devDependencies"]);
}

#[test]
fn without_a_configmap_child_the_plugin_returns_none_and_the_role_names_the_plugin_configmap() {
    let opts = Options {
        children: vec!["v1/Secret".into()],
        ..options(Lang::Rust, "/x/greeter")
    };
    let files = files_of(&opts);
    assert!(!files[Path::new("src/lib.rs")].contains("ConfigMap\","));
    assert!(files[Path::new("fixtures/new-parent.yaml")].contains("children: []"));
    assert!(files[Path::new("deploy/rbac.yaml")].contains("resourceNames: [greeter-plugin]"));
}

#[test]
fn a_directory_with_files_is_refused() {
    let dir = std::env::temp_dir().join(format!("wasmop-init-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "mine").unwrap();
    let err = init(&options(Lang::Go, dir.to_str().unwrap())).unwrap_err();
    assert!(err.to_string().contains("exists and is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("keep.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
