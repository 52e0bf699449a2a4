//! Integration tests of the e2i tools (one test binary; each topic is a module in cli/).

mod cli {
    pub mod scramble;
    pub mod util;
}

mod raw_basic {
    use super::cli::util::*;
    use std::process::Command;

    #[test]
    fn raw_matches_e2image_on_a_small_fs() {
        let d = tempdir();
        let img = mkfs(d.path(), "fs.img", "4M", &[]);
        let ours = d.path().join("ours.raw");
        let theirs = d.path().join("theirs.raw");
        let o = run(Command::new(tool("e2i-capture"))
            .arg("-r")
            .arg(&img)
            .arg(&ours));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let st = Command::new("e2image")
            .arg("-r")
            .arg(&img)
            .arg(&theirs)
            .output()
            .expect("e2image");
        assert!(st.status.success());
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap()
        );
    }
}
