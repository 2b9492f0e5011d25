{
  description = "airlock: build untrusted nixpkgs pull requests in throwaway VMs";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      top = import ./default.nix { inherit pkgs; };
    in
    {
      packages.${system} = {
        inherit (top) airlock guest-image;
        default = top.airlock;
      };
      nixosModules.default = ./nixos/module.nix;
      overlays.default = import ./nixos/overlay.nix;
      # The NixOS VM tests (nix flake check; they need KVM).
      checks.${system} = top.tests;
    };
}
