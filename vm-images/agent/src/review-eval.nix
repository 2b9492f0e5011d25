# Review mode's evaluation (issue 16), run by the guest agent with
# `nix-instantiate --eval --strict --json` (and by tests on the host, to
# check the guest's answer). Untrusted code is evaluated: every attr is
# guarded with `builtins.tryEval`, so one that throws is reported, not fatal.
#
# mode = "outpaths": for every attr of `attrsFile` (a JSON list of attr
#   paths), or, without one, every derivation `nix-env -qa` would list (the
#   top level, and sets with `recurseForDerivations`; with `rootsFile`, a
#   JSON list of top-level names, only below those):
#     { "<attr>" = { drvPath; outputs = { out = "/nix/store/…"; … }; kvm; }
#                | { error = "non-existent" | "broken" | "not-a-derivation"; }; }
#   In read-only mode nothing is written to the store.
# mode = "names": the top-level attr names (for `rootsFile`).
#
# `tryEval` catches `throw` and `assert` only: a missing attribute or an
# `abort` ends the whole evaluation. The agent then splits the list (or the
# roots) in halves until it finds the attr that does it, and reports that
# one as broken.
# mode = "tests": for every attr of `attrsFile`, its own derivation and its
#   `passthru.tests` (run with --read-write-mode, so the .drv files exist):
#     { "<attr>" = { drvPath; outputs; tests = { "<name>" = { drvPath;
#       outputs; kvm = bool; nixos = bool; } | { error = "broken"; }; }; }; }
{ src
, entry ? "default.nix"
, system
, mode ? "outpaths"
, attrsFile ? null
, rootsFile ? null
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
          let x = {
            drvPath = v.drvPath;
            outputs = outputsOf v;
            kvm = elem "kvm" (v.requiredSystemFeatures or [ ]);
          }; in builtins.deepSeq x x
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

  roots = builtins.fromJSON (builtins.readFile rootsFile);
  attrs =
    if attrsFile != null then builtins.fromJSON (builtins.readFile attrsFile)
    else if rootsFile != null then discover "" (builtins.intersectAttrs (builtins.listToAttrs (map (n: { name = n; value = null; }) roots)) pkgs)
    else discover "" pkgs;

  testsOf = path:
    let
      l = lookup path;
      t = tryEval (if l.found && isAttrs l.value then (l.value.passthru.tests or l.value.tests or { }) else { });
      set = if t.success && isAttrs t.value then t.value else { };
      one = name:
        let
          v = tryEval (getAttr name set);
          d = if v.success then describe v.value else { error = "broken"; };
          nixos = tryEval (isAttrs v.value && (v.value ? driverInteractive || v.value ? nodes));
        in
        if d ? error then d
        else d // {
          nixos = nixos.success && nixos.value;
        };
    in
    listToAttrs (filter (x: !(x.value ? error && x.value.error == "not-a-derivation"))
      (map (name: { inherit name; value = one name; }) (attrNames set)));
in
if mode == "names" then attrNames pkgs
else listToAttrs (map
  (path: {
    name = path;
    value =
      if mode == "tests" then
        let d = describeAttr path; in
        if d ? error then d else d // { tests = testsOf path; }
      else describeAttr path;
  })
  attrs)
