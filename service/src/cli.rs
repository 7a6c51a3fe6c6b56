//! Configuration helpers shared by the binaries.

/// The values of `T`'s flags when none is given on a command line: each flag's environment
/// variable, else its default. Lets in-process users of an options struct (the embedded run)
/// take the defaults stated once in its `#[arg]` attributes instead of repeating them.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> Result<T, clap::Error> {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = command.try_get_matches_from(std::iter::empty::<String>())?;
    T::from_arg_matches(&matches)
}

/// Parses the process's command line into `T`, as `T::parse()` does, except that help shows
/// each flag's environment variable by name alone (`[env: FLEET_CONTAINER]`): clap would show
/// its value, `[env: FLEET_CONTAINER=]` when unset, which reads as "set to empty", and a
/// deployed container's help would print whatever its environment holds.
pub fn parse<T: clap::Parser>() -> T {
    parse_with_matches().0
}

/// [`parse`], with the matches it was read from: where each value came from (the command
/// line, the environment, a default), for checks clap cannot state.
pub fn parse_with_matches<T: clap::Parser>() -> (T, clap::ArgMatches) {
    let command = names_env_only(T::command());
    let matches = command.get_matches();
    let parsed = T::from_arg_matches_mut(&mut matches.clone()).unwrap_or_else(|e| e.exit());
    (parsed, matches)
}

/// `command` with every argument's environment value hidden, in every subcommand.
fn names_env_only(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.hide_env_values(true))
        .mut_subcommands(names_env_only)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, clap::Args)]
    struct Example {
        #[arg(long, default_value_t = 7)]
        count: u32,
        #[arg(long)]
        name: Option<String>,
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[arg(long, env = "CLI_TEST_NAME")]
        name: Option<String>,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Run {
            #[arg(long, env = "CLI_TEST_COUNT")]
            count: Option<u32>,
        },
    }

    #[test]
    fn help_names_variables_without_their_values() {
        use clap::CommandFactory;
        let mut command = super::names_env_only(Cli::command());
        let top = command.render_long_help().to_string();
        assert!(top.contains("[env: CLI_TEST_NAME]"), "{top}");
        let run = command
            .find_subcommand_mut("run")
            .expect("the subcommand")
            .render_long_help()
            .to_string();
        assert!(run.contains("[env: CLI_TEST_COUNT]"), "{run}");
    }

    #[test]
    fn defaults_come_from_the_arg_attributes() {
        let example: Example = super::defaults().unwrap();
        assert_eq!((example.count, example.name), (7, None));
    }
}
