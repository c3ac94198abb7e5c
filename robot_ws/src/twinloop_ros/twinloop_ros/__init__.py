"""twinloop_ros: thin rclpy adapters over the ROS-free twinloop core."""
