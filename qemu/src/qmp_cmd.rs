//! `tandem qmp`: send one QMP command to a running instance and print the reply.

use std::time::Duration;

use anyhow::Context;

use crate::cli::QmpArgs;
use crate::qmp::Qmp;
use crate::state::StateDir;

/// Run `tandem qmp`; prints the command's `return` value as pretty JSON.
pub fn qmp(args: &QmpArgs) -> anyhow::Result<i32> {
    let arguments = match &args.args {
        Some(text) => {
            let v: serde_json::Value = serde_json::from_str(text)
                .with_context(|| format!("QMP arguments are not valid JSON: {text}"))?;
            anyhow::ensure!(v.is_object(), "QMP arguments must be a JSON object: {text}");
            Some(v)
        }
        None => None,
    };
    let sock = StateDir::new(&args.state_dir).qmp_socket();
    let mut q = Qmp::connect(&sock, Duration::from_secs(args.timeout)).with_context(|| {
        format!(
            "is `tandem run --state-dir {}` running?",
            args.state_dir.display()
        )
    })?;
    let reply = if args.command == "quit" {
        q.quit().map(|()| serde_json::json!({}))
    } else {
        q.execute(&args.command, arguments)
    }?;
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(0)
}
