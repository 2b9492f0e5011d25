# Review mode's evaluation (issue 16), run by the guest agent with
# `nix-instantiate --eval --strict --json` (and by tests on the host, to
# check the guest's answer). Untrusted code is evaluated: every attr is
# guarded with `builtins.tryEval`, so one that throws is reported, not fatal.
#
# mode = "outpaths": for every attr of `attrsFile` (a JSON list of attr
#   paths), or, without one, every derivation `nix-env -qa` would list (the
#   top level, and sets with `recurseForDerivations`):
#     { "<attr>" = { drvPath; outputs = { out = "/nix/store/…"; … }; }
#                | { error = "non-existent" | "broken"; }; }
#   In read-only mode nothing is written to the store.
# mode = "tests": for every attr of `attrsFile`, its own derivation and its
#   `passthru.tests` (run with --read-write-mode, so the .drv files exist):
#     { "<attr>" = { drvPath; outputs; tests = { "<name>" = { drvPath;
#       outputs; kvm = bool; nixos = bool; } | { error = "broken"; }; }; }; }
{ src
, entry ? "default.nix"
, system
, mode ? "outpaths"
, attrsFile ? null
}:
let
  pkgs = import (src + "/${entry}") { inherit system; config = { }; overlays = [ ]; };
  inherit (builtins) tryEval isAttrs listToAttrs filter concatMap attrNames
    hasAttr getAttr elem foldl' length head tail;

  isDrv = v: isAttrs v && (v.type or null) == "derivation";

  # Attr path "a.b.c" split at dots (attr names with dots are not supported).
  splitPath = p: filter builtins.isString (builtins.split "\\." p);

  # { found = bool; value; } without throwing on a missing attr.
  lookup = path:
    let
      go = v: ps:
        if ps == [ ] then { found = true; value = v; }
        else
          let r = tryEval (isAttrs v && hasAttr (head ps) v); in
          if r.success && r.value then go (getAttr (head ps) v) (tail ps)
          else { found = false; value = null; };
    in go pkgs (splitPath path);

  outputsOf = d: listToAttrs (map (o: { name = o; value = d.${o}.outPath; }) (d.outputs or [ "out" ]));

  # The derivation's identity, or an error. `deepSeq` forces every output
  # path inside tryEval, so a throw in any of them is caught.
  describe = v:
    let
      r = tryEval (
        if isDrv v then
          let x = { drvPath = v.drvPath; outputs = outputsOf v; }; in builtins.deepSeq x x
        else null);
    in
    if !r.success then { error = "broken"; }
    else if r.value == null then { error = "not-a-derivation"; }
    else r.value;

  describeAttr = path:
    let l = lookup path; in
    if !l.found then { error = "non-existent"; } else describe l.value;

  # What `nix-env -qa` lists: derivations at the top, recursing into sets
  # marked with `recurseForDerivations`.
  discover = prefix: set:
    concatMap
      (name:
        let
          path = if prefix == "" then name else "${prefix}.${name}";
          r = tryEval (getAttr name set);
          v = r.value;
          kind = tryEval (if isDrv v then "drv" else if isAttrs v && (v.recurseForDerivations or false) == true then "set" else "other");
        in
        if !r.success || !kind.success then [ path ]
        else if kind.value == "drv" then [ path ]
        else if kind.value == "set" then discover path v
        else [ ])
      (attrNames set);

  attrs = if attrsFile == null then discover "" pkgs else builtins.fromJSON (builtins.readFile attrsFile);

  testsOf = path:
    let
      l = lookup path;
      t = tryEval (if l.found && isAttrs l.value then (l.value.passthru.tests or l.value.tests or { }) else { });
      set = if t.success && isAttrs t.value then t.value else { };
      one = name:
        let
          v = tryEval (getAttr name set);
          d = if v.success then describe v.value else { error = "broken"; };
          feats = tryEval (v.value.requiredSystemFeatures or [ ]);
          nixos = tryEval (isAttrs v.value && (v.value ? driverInteractive || v.value ? nodes));
        in
        if d ? error then d
        else d // {
          kvm = feats.success && elem "kvm" feats.value;
          nixos = nixos.success && nixos.value;
        };
    in
    listToAttrs (filter (x: !(x.value ? error && x.value.error == "not-a-derivation"))
      (map (name: { inherit name; value = one name; }) (attrNames set)));
in
listToAttrs (map
  (path: {
    name = path;
    value =
      if mode == "tests" then
        let d = describeAttr path; in
        if d ? error then d else d // { tests = testsOf path; }
      else describeAttr path;
  })
  attrs)
