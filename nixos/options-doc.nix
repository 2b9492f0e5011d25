# The options table of docs/nixos.md, as Markdown, from the module's own
# option declarations. docs/nixos.md holds the output between its
# "BEGIN generated" and "END generated" lines; scripts/gen-nixos-options.sh
# rewrites that block, and tests/tests/packaging/nixos.rs fails when it is stale.
#
#   nix-instantiate --eval --strict --json nixos/options-doc.nix \
#     --arg nixpkgs /path/to/nixpkgs | jq -j .
#
# Only the option declarations are evaluated: no NixOS system, no config,
# no default that has a defaultText (so no package is instantiated).
{
  nixpkgs ? <nixpkgs>,
  # pkgs/top-level/impure.nix: the package set without the Nix-version gate
  # of nixpkgs' default.nix, so this runs on old Nix too (only
  # `pkgs.formats` is used, for the type of `settings`).
  pkgs ? import (nixpkgs + "/pkgs/top-level/impure.nix") { },
}:
let
  inherit (pkgs) lib;

  eval = lib.evalModules {
    modules = [
      ./module.nix
      {
        _module.args.pkgs = pkgs;
        # The module's `config` sets NixOS options (systemd, networking, …)
        # that are not declared here; they are never evaluated.
        _module.check = false;
      }
    ];
  };

  # Every option in `tree`, in attribute order, each followed by the options
  # of its submodule (`sponsor` by `sponsor.name`, `sponsor.url`). Internal
  # and invisible ones are left out (`visible = "shallow"` hides only the
  # sub-options, `"transparent"` only the option itself).
  collectOptions =
    tree:
    lib.concatMap (
      opt:
      let
        visible = opt.visible or true;
        sub = opt.type.getSubOptions opt.loc;
      in
      lib.optional (!(opt.internal or false) && (visible == true || visible == "shallow")) opt
      ++ lib.optionals ((visible == true || visible == "transparent") && sub != { }) (
        collectOptions sub
      )
    ) (lib.collect lib.isOption tree);

  options = lib.filter (o: !(lib.any (lib.hasPrefix "_") o.loc)) (
    collectOptions eval.options.services.airlock
  );

  # One table cell: a single line, pipes escaped.
  cell =
    s:
    let
      words = lib.filter (w: w != "") (
        lib.splitString " " (lib.replaceStrings [ "\n" "\t" ] [ " " " " ] s)
      );
    in
    lib.replaceStrings [ "|" ] [ "\\|" ] (lib.concatStringsSep " " words);

  # Code in a cell: enough backticks that the code's own do not end it.
  code =
    s:
    let
      t = cell s;
      fence = if lib.hasInfix "`" t then "``" else "`";
      pad = if lib.hasPrefix "`" t || lib.hasSuffix "`" t then " " else "";
    in
    "${fence}${pad}${t}${pad}${fence}";

  default =
    o:
    if o ? defaultText then
      (
        if (o.defaultText._type or null) == "literalMD" then
          cell o.defaultText.text
        else
          code (o.defaultText.text or o.defaultText)
      )
    else if o ? default then
      code (lib.generators.toPretty { multiline = false; } o.default)
    else
      "none (must be set)";

  row =
    o:
    "| ${code (lib.showOption o.loc)} | ${cell (o.type.description or "unspecified")} | ${default o} | ${
      cell (o.description or "")
    } |";
in
lib.concatStringsSep "\n" (
  [
    "| option | type | default | description |"
    "|---|---|---|---|"
  ]
  ++ map row options
)
+ "\n"
