# pkgs.airlock and pkgs.airlock-guest-image, for nixpkgs.overlays.
final: _prev: {
  airlock = final.callPackage ./package.nix { };
  airlock-guest-image = final.callPackage ../vm-images/nix/guest.nix { };
}
