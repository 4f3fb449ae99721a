"""File formats: CaloChallenge HDF5 + binning XML (canonical), CaloGAN HDF5, ROOT."""
