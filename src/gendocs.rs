//! The man page and the shell completions, generated from the command line's own definition, so
//! they cannot drift from it: `patroni-proxy man` and `patroni-proxy completions SHELL` print them
//! for the Debian package (scripts/package).

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

/// Writes a completion script for `shell` to stdout.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = C::command();
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    flushed(out.flush())
}

/// Writes the man page (section 1, roff) to stdout, with a FILES and SIGNALS section of our own.
pub fn man<C: CommandFactory>() -> ExitCode {
    let cmd = C::command();
    let page = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    let rendered = page.render(&mut out).and_then(|()| {
        out.extend_from_slice(EXTRA.as_bytes());
        std::io::stdout().lock().write_all(&out)
    });
    flushed(rendered)
}

/// What the CLI definition does not say and an operator needs (roff).
const EXTRA: &str = r#".SH FILES
.TP
\fI/etc/patroni\-proxy/proxy.toml\fR
The configuration of the packaged service (\fBpatroni\-proxy.service\fR). Check it with
\fBpatroni\-proxy check \-\-config /etc/patroni\-proxy/proxy.toml\fR.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop accepting, drain open sessions for up to \fIglobal.shutdown_grace\fR, exit 0. A second one
closes every session at once.
.TP
\fBSIGHUP\fR
Reload: read the configuration file again; if it is valid and every change applies live, it
becomes the running configuration without dropping a session; otherwise the proxy keeps running
on the old one and logs why (\fBpatroni\-proxy reload\fR does the same and prints the outcome).
.SH EXIT STATUS
0 after a drain; 64 for an unusable configuration; 1 when the proxy stopped by itself.
.SH SEE ALSO
/usr/share/doc/patroni\-proxy/ (operations.md, configuration.md)
"#;

fn flushed(r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not worth a panic.
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
