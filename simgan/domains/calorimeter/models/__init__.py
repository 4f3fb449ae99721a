"""The calorimeter surrogates: the log(x/E_inc) transform, the voxel GAN/VAE and the layered two-stage models."""
