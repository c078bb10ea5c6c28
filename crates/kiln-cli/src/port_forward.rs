//! Port forwards: `kiln port-forward add|list|remove`.

use crate::api_client::{encode, print_json, ApiArgs, CliError, Output};
use crate::table::Table;
use clap::{Args, Subcommand};
use kiln_api::{CreatePortForward, PortForward, Protocol};

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    #[command(subcommand)]
    pub command: PortForwardCommand,
}

#[derive(Debug, Subcommand)]
pub enum PortForwardCommand {
    /// Forward a port of the host (any of its addresses but loopback) to a VM's port on its
    /// first NIC.
    Add(AddArgs),
    /// List forwards, of every VM you may see or of one.
    List(ListArgs),
    /// Remove a VM's forward of a host port.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The VM.
    pub vm: String,
    /// HOSTPORT:GUESTPORT, then /udp for UDP (TCP otherwise), like 8080:80 or 5353:53/udp.
    #[arg(value_name = "HOSTPORT:GUESTPORT[/udp]")]
    pub ports: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this VM's.
    pub vm: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The VM.
    pub vm: String,
    /// HOSTPORT, then /udp for a UDP forward.
    #[arg(value_name = "HOSTPORT[/udp]")]
    pub port: String,
}

fn port(text: &str, what: &str) -> Result<u16, CliError> {
    text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
        CliError::Input(format!("{what} {text:?} is not a port: give a number from 1 to 65535"))
    })
}

/// `8080`, `8080/udp`, `8080/tcp` → (port text, protocol).
fn split_protocol(text: &str) -> Result<(&str, Protocol), CliError> {
    match text.split_once('/') {
        None => Ok((text, Protocol::Tcp)),
        Some((p, "tcp")) => Ok((p, Protocol::Tcp)),
        Some((p, "udp")) => Ok((p, Protocol::Udp)),
        Some((_, other)) => {
            Err(CliError::Input(format!("protocol {other:?}: give /tcp or /udp (or nothing)")))
        }
    }
}

/// Parses `HOSTPORT:GUESTPORT[/udp]`.
fn parse_ports(text: &str) -> Result<(u16, u16, Protocol), CliError> {
    let (ports, protocol) = split_protocol(text)?;
    let (host, guest) = ports.split_once(':').ok_or_else(|| {
        CliError::Input(format!("{text:?}: give HOSTPORT:GUESTPORT[/udp], like 8080:80"))
    })?;
    Ok((port(host, "host port")?, port(guest, "guest port")?, protocol))
}

/// Runs one port-forward command.
pub fn run(args: PortForwardArgs, api: &ApiArgs) -> Result<(), CliError> {
    let client = api.client()?;
    let out = api.output;
    match args.command {
        PortForwardCommand::Add(a) => {
            let (host_port, guest_port, protocol) = parse_ports(&a.ports)?;
            let spec = CreatePortForward { vm: a.vm, host_port, guest_port, protocol };
            let f: PortForward = client.call("POST", "/v1/port-forwards", Some(&spec))?;
            if out == Output::Json {
                return print_json(&f);
            }
            println!(
                "forwarding host {} port {} to VM {} at {}:{}",
                f.protocol.as_str(),
                f.host_port,
                f.vm,
                f.guest_ip,
                f.guest_port
            );
            Ok(())
        }
        PortForwardCommand::List(a) => {
            let path = match &a.vm {
                Some(vm) => format!("/v1/port-forwards?vm={}", encode(vm)),
                None => "/v1/port-forwards".to_owned(),
            };
            let forwards: Vec<PortForward> = client.get(&path)?;
            if out == Output::Json {
                return print_json(&forwards);
            }
            let mut t = Table::new(&["VM", "PROTOCOL", "HOST PORT", "GUEST", "CREATED"]);
            for f in &forwards {
                t.row(vec![
                    f.vm.clone(),
                    f.protocol.as_str().to_owned(),
                    f.host_port.to_string(),
                    format!("{}:{}", f.guest_ip, f.guest_port),
                    f.created_at.clone(),
                ]);
            }
            t.print()
        }
        PortForwardCommand::Remove(a) => {
            let (host, protocol) = split_protocol(&a.port)?;
            let host_port = port(host, "host port")?;
            let path = format!("/v1/port-forwards?vm={}", encode(&a.vm));
            let forwards: Vec<PortForward> = client.get(&path)?;
            let found = forwards
                .iter()
                .find(|f| f.host_port == host_port && f.protocol == protocol)
                .ok_or_else(|| {
                    CliError::NotFound(format!(
                        "VM {:?} has no {} forward of host port {host_port}",
                        a.vm,
                        protocol.as_str()
                    ))
                })?;
            client.delete(&format!("/v1/port-forwards/{}", found.id))?;
            if out == Output::Json {
                return print_json(&serde_json::json!({ "removed": found }));
            }
            println!("removed the forward of host {} port {host_port}", protocol.as_str());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_their_protocol() {
        assert!(matches!(parse_ports("8080:80"), Ok((8080, 80, Protocol::Tcp))));
        assert!(matches!(parse_ports("5353:53/udp"), Ok((5353, 53, Protocol::Udp))));
        for bad in ["8080", "0:80", "8080:70000", "8080:80/sctp", "a:b"] {
            assert!(matches!(parse_ports(bad), Err(CliError::Input(_))), "{bad}");
        }
    }
}
