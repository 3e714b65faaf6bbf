"""Episodes: one endpoint of one service port being taken out of rotation, stage by stage."""
