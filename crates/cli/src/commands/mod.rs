//! One module per group of subcommands; [`run`] dispatches.

pub mod api;
pub mod auth;
pub mod checkpoint;
pub mod connectors;
pub mod cp;
pub mod exec;
pub mod mcp;
pub mod proxy;
pub mod sprites;
pub mod upgrade;

use anyhow::Result;

use crate::context::Ctx;
use crate::{CheckpointCmd, Cli, Cmd, OrgCmd, SessionsCmd};

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let Cli { org, sprite, cmd } = cli;
    match cmd {
        Cmd::Login { api_url } => auth::login(api_url).await,
        Cmd::Org {
            cmd: OrgCmd::Auth { api_url },
        } => auth::org_auth(api_url, org).await,
        Cmd::Auth {
            cmd: crate::AuthCmd::Setup { token },
        } => auth::setup(&token).await,
        Cmd::Logout => auth::logout(),
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "sprite", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Org { cmd: OrgCmd::List } => auth::org_list(),
        Cmd::Org {
            cmd: OrgCmd::Keyring { cmd },
        } => auth::keyring(cmd),
        Cmd::Org {
            cmd: OrgCmd::Logout { force },
        } => auth::org_logout(org, force),
        other => {
            let ctx = Ctx::resolve(org, sprite)?;
            match other {
                Cmd::Create {
                    name,
                    skip_console,
                    from,
                    template,
                } => sprites::create(&ctx, name, skip_console, from, template).await,
                Cmd::Templates { cmd } => sprites::templates(&ctx, cmd).await,
                Cmd::Org {
                    cmd: OrgCmd::Tokens { cmd },
                } => auth::tokens(&ctx, cmd).await,
                Cmd::Sleep { cold, force } => sprites::sleep(&ctx, cold, force).await,
                Cmd::Update {
                    warm_after,
                    cold_after,
                    default_idle,
                } => sprites::update_idle(&ctx, warm_after, cold_after, default_idle).await,
                Cmd::Use { name, unset } => sprites::use_sprite(&ctx, name, unset).await,
                Cmd::List { prefix, watch } => sprites::list(&ctx, prefix, watch).await,
                Cmd::Destroy { name, force } => sprites::destroy(&ctx, name, force).await,
                Cmd::Url { cmd } => sprites::url(&ctx, cmd).await,
                Cmd::Image { cmd } => sprites::image(&ctx, cmd).await,
                Cmd::Exec(args) => exec::exec(&ctx, args).await,
                Cmd::Console => exec::console(&ctx).await,
                Cmd::Sessions {
                    cmd: SessionsCmd::List,
                } => exec::sessions_list(&ctx).await,
                Cmd::Sessions {
                    cmd: SessionsCmd::Attach { id },
                }
                | Cmd::Attach { id } => exec::attach(&ctx, id).await,
                Cmd::Sessions {
                    cmd:
                        SessionsCmd::Kill {
                            id,
                            signal,
                            timeout,
                        },
                } => exec::kill(&ctx, &id, &signal, &timeout).await,
                Cmd::Checkpoint { cmd } => match cmd {
                    CheckpointCmd::Create { comment } => checkpoint::create(&ctx, comment).await,
                    CheckpointCmd::List {
                        include_auto,
                        history,
                    } => checkpoint::list(&ctx, include_auto, history).await,
                    CheckpointCmd::Info { id } => checkpoint::info(&ctx, &id).await,
                    CheckpointCmd::Delete { id } => checkpoint::delete(&ctx, &id).await,
                    CheckpointCmd::Restore { id } => checkpoint::restore(&ctx, &id).await,
                },
                Cmd::Restore { id } => checkpoint::restore(&ctx, &id).await,
                Cmd::Connectors { cmd } => connectors::connectors(&ctx, cmd).await,
                Cmd::Labels { cmd } => connectors::labels(&ctx, cmd).await,
                Cmd::Mcp { cmd } => mcp::mcp(&ctx, cmd).await,
                Cmd::Api { path, curl_args } => api::api(&ctx, &path, &curl_args),
                Cmd::Proxy { ports, stdio } => proxy::proxy(&ctx, &ports, stdio).await,
                Cmd::Cp { src, dest } => cp::cp(&ctx, &src, &dest).await,
                Cmd::Upgrade {
                    check,
                    force,
                    version,
                    channel,
                } => upgrade::upgrade(&ctx, check, force, version, channel).await,
                _ => unreachable!("handled above"),
            }
        }
    }
}

/// Asks a yes/no question on the terminal; `false` unless the answer starts with y.
pub fn confirm(question: &str) -> Result<bool> {
    use std::io::Write;
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Asks for one line on the terminal (the question on stderr); the answer trimmed.
pub fn ask(question: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim().to_string())
}
