# Shared by the tests: a git repository with the fixture package set, made
# on the builder by the test script.
{ fixtures }:
''
  def make_repo(machine, path):
      """A repo whose master has the fixture set and whose branch pr has one
      more commit; returns (base, head)."""
      machine.succeed(
          f"mkdir -p {path} && cd {path} && git init -q -b master"
          " && git config user.email t@example.org && git config user.name test"
          f" && cp ${fixtures}/default.nix . && chmod u+w default.nix"
          " && git add -A && git commit -q -m base"
          " && git checkout -q -b pr && echo '# pr' >> default.nix"
          " && git commit -q -am pr && git checkout -q master"
      )
      base = machine.succeed(f"git -C {path} rev-parse master").strip()
      head = machine.succeed(f"git -C {path} rev-parse pr").strip()
      return base, head
''
